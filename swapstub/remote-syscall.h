/* A system call run inside another process, for what no interface answers
 * from outside: mincore() of its swap cache.
 *
 * One thread of the target (its main thread) is stopped with ptrace, lent
 * for a few system calls, and put back exactly as it was: the technique of
 * CRIU's parasite code and of gdb's "call". The thread is stopped only
 * while a caller holds the handle; keep that short. x86-64 only; elsewhere
 * ss_remote_attach() fails, saying so, and callers fall back. */
#ifndef SWAPSTUB_REMOTE_SYSCALL_H
#define SWAPSTUB_REMOTE_SYSCALL_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct SsRemote SsRemote;

/* Stop the main thread of pid (PTRACE_SEIZE + PTRACE_INTERRUPT) and find a
 * syscall instruction to borrow. Needs CAP_SYS_PTRACE over pid; fails if
 * something else already traces it (a debugger). */
SsRemote *ss_remote_attach(pid_t pid, GError **error);

/* Run syscall nr with up to six arguments in the target; *ret is its raw
 * return value (-errno on failure, as the kernel returns it). False if the
 * thread could not be driven (then the handle is detached: free it). */
bool ss_remote_syscall(SsRemote *r, long nr, const uint64_t args[6], int64_t *ret,
                       GError **error);

/* Put the thread's registers back and let it run on. Safe on NULL. */
void ss_remote_detach(SsRemote *r);

/* mincore() of [addr, addr + pages * 4096) in process pid, run in that
 * process: vec[i] bit 0 set if page i is resident, in memory or in the
 * swap cache (mincore's meaning). */
bool ss_remote_mincore(pid_t pid, uint64_t addr, size_t pages, unsigned char *vec,
                       GError **error);

/* madvise(addr, len, advice) run in process pid: for the advice
 * process_madvise() does not take (MADV_POPULATE_READ: map pages in, from
 * the swap cache where they are there). */
bool ss_remote_madvise(pid_t pid, uint64_t addr, uint64_t len, int advice, GError **error);

#endif
