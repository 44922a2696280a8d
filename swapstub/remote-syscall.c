/* System calls run inside another process (remote-syscall.h).
 *
 * The borrowed thread is seized and interrupted; if it was inside a system
 * call (a QEMU waiting for -incoming sits in ppoll), the syscall
 * instruction it entered by is reused, else one in its vDSO. Each call sets
 * the registers to "syscall nr(args)" at that instruction and runs the
 * thread from syscall entry to syscall exit. At the end the registers are
 * put back, with the interrupted call set up to be entered again (as the
 * kernel itself does when a signal without a handler interrupts a call:
 * CRIU restores its parasite's host threads the same way), and the thread
 * is let go with any signal that arrived meanwhile. */
#include "remote-syscall.h"
#include "target.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__x86_64__)

/* The kernel's internal restart codes, as a syscall interrupted by a stop
 * leaves them in rax (include/linux/errno.h: not in user headers). */
#define SS_ERESTARTSYS 512
#define SS_ERESTARTNOINTR 513
#define SS_ERESTARTNOHAND 514
#define SS_ERESTART_RESTARTBLOCK 516
#define SS_SYSCALL_INSN 0x050f     /* 0f 05, little-endian */
#define MAX_HELD_SIGNALS 4

struct SsRemote {
    pid_t pid;
    struct user_regs_struct saved;    /* as stopped */
    struct user_regs_struct restore;  /* saved, the interrupted call set up again */
    uint64_t insn;                    /* a syscall instruction in the target */
    bool injected;                    /* registers changed since the stop */
    int held[MAX_HELD_SIGNALS];       /* signals that arrived meanwhile */
    unsigned n_held;
};

static bool wait_stop(SsRemote *r, int *status, GError **error)
{
    for (;;) {
        pid_t w = waitpid(r->pid, status, __WALL);
        if (w == r->pid)
            break;
        if (w < 0 && errno == EINTR)
            continue;
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "waitpid on the traced thread %d failed: %s", (int)r->pid,
                    g_strerror(errno));
        return false;
    }
    if (WIFSTOPPED(*status))
        return true;
    g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                "process %d ended while swapstub was running a system call in it (%s %d)",
                (int)r->pid, WIFEXITED(*status) ? "exit status" : "signal",
                WIFEXITED(*status) ? WEXITSTATUS(*status) : WTERMSIG(*status));
    return false;
}

/* A signal-delivery stop: keep the signal for the detach, which delivers
 * it once the thread's own registers are back. */
static bool hold_signal(SsRemote *r, int sig, GError **error)
{
    if (r->n_held == MAX_HELD_SIGNALS) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_AGAIN,
                    "process %d keeps receiving signals (%d) while stopped by swapstub",
                    (int)r->pid, sig);
        return false;
    }
    r->held[r->n_held++] = sig;
    return true;
}

static bool ptrace_ok(long rc, const char *what, SsRemote *r, GError **error)
{
    if (rc != -1)
        return true;
    g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                "ptrace(%s) of process %d failed: %s", what, (int)r->pid, g_strerror(errno));
    return false;
}

static bool read_remote(pid_t pid, uint64_t addr, void *buf, size_t len)
{
    struct iovec local = { buf, len }, remote = { (void *)(uintptr_t)addr, len };
    return process_vm_readv(pid, &local, 1, &remote, 1, 0) == (ssize_t)len;
}

/* A syscall instruction in the target's vDSO (it has them for its
 * fallbacks to real system calls). */
static bool find_vdso_insn(SsRemote *r, GError **error)
{
    g_auto(GStrv) lines = target_maps_lines(r->pid, error);
    if (!lines)
        return false;
    for (char **l = lines; *l; l++) {
        unsigned long long lo, hi;
        if (!g_str_has_suffix(*l, "[vdso]") || sscanf(*l, "%llx-%llx", &lo, &hi) != 2 ||
            hi - lo > (1u << 20))
            continue;
        g_autofree unsigned char *text = g_malloc(hi - lo);
        if (!read_remote(r->pid, lo, text, hi - lo))
            break;
        for (size_t i = 0; i + 1 < hi - lo; i++) {
            if (text[i] == 0x0f && text[i + 1] == 0x05) {
                r->insn = lo + i;
                return true;
            }
        }
    }
    g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                "found no syscall instruction to borrow in process %d (not stopped in a "
                "system call, and no readable vDSO)", (int)r->pid);
    return false;
}

SsRemote *ss_remote_attach(pid_t pid, GError **error)
{
    g_autofree SsRemote *r = g_new0(SsRemote, 1);
    r->pid = pid;
    if (ptrace(PTRACE_SEIZE, pid, NULL, (void *)(long)PTRACE_O_TRACESYSGOOD) == -1) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "ptrace(PTRACE_SEIZE) of process %d failed: %s (needs root or "
                    "CAP_SYS_PTRACE; is a debugger or strace already attached?)", (int)pid,
                    g_strerror(errno));
        return NULL;
    }
    int st;
    if (!ptrace_ok(ptrace(PTRACE_INTERRUPT, pid, NULL, NULL), "PTRACE_INTERRUPT", r, error))
        goto detach;
    for (;;) {
        if (!wait_stop(r, &st, error))
            return NULL;             /* gone: nothing to detach */
        if ((st >> 16) == PTRACE_EVENT_STOP)
            break;
        /* A signal arrived first: it is delivered at detach. */
        if (!hold_signal(r, WSTOPSIG(st), error) ||
            !ptrace_ok(ptrace(PTRACE_CONT, pid, NULL, NULL), "PTRACE_CONT", r, error))
            goto detach;
    }
    if (WSTOPSIG(st) != SIGTRAP) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_AGAIN,
                    "process %d is stopped (signal %d): continue it (kill -CONT) first",
                    (int)pid, WSTOPSIG(st));
        goto detach;
    }
    if (!ptrace_ok(ptrace(PTRACE_GETREGS, pid, NULL, &r->saved), "PTRACE_GETREGS", r, error))
        goto detach;
    r->restore = r->saved;
    if ((int64_t)r->saved.orig_rax >= 0) {
        uint16_t at = 0;
        if (read_remote(pid, r->saved.rip - 2, &at, 2) && at == SS_SYSCALL_INSN)
            r->insn = r->saved.rip - 2;
        /* Left to itself the kernel would enter the interrupted call again
         * on the way out of this stop; after other calls have run in
         * between, that is for us to set up. */
        switch ((int64_t)r->saved.rax) {
        case -SS_ERESTARTSYS:
        case -SS_ERESTARTNOINTR:
        case -SS_ERESTARTNOHAND:
            r->restore.rax = r->saved.orig_rax;
            r->restore.rip -= 2;
            break;
        case -SS_ERESTART_RESTARTBLOCK:
            r->restore.rax = (uint64_t)-EINTR;  /* the caller retries, as after a signal */
            break;
        }
    }
    if (!r->insn && !find_vdso_insn(r, error))
        goto detach;
    return g_steal_pointer(&r);

detach:
    ss_remote_detach(g_steal_pointer(&r));
    return NULL;
}

/* Run the thread to its next syscall stop, holding any signal met. */
static bool to_syscall_stop(SsRemote *r, GError **error)
{
    for (;;) {
        int st;
        if (!ptrace_ok(ptrace(PTRACE_SYSCALL, r->pid, NULL, NULL), "PTRACE_SYSCALL", r, error) ||
            !wait_stop(r, &st, error))
            return false;
        if (WSTOPSIG(st) == (SIGTRAP | 0x80))
            return true;
        if ((st >> 16) == 0 && !hold_signal(r, WSTOPSIG(st), error))
            return false;
    }
}

bool ss_remote_syscall(SsRemote *r, long nr, const uint64_t args[6], int64_t *ret,
                       GError **error)
{
    struct user_regs_struct regs = r->saved;
    regs.rip = r->insn;
    regs.rax = (uint64_t)nr;
    regs.orig_rax = (uint64_t)-1;    /* no restart logic on the way back to user mode */
    regs.rdi = args[0];
    regs.rsi = args[1];
    regs.rdx = args[2];
    regs.r10 = args[3];
    regs.r8 = args[4];
    regs.r9 = args[5];
    r->injected = true;
    if (!ptrace_ok(ptrace(PTRACE_SETREGS, r->pid, NULL, &regs), "PTRACE_SETREGS", r, error) ||
        !to_syscall_stop(r, error) ||  /* entry */
        !to_syscall_stop(r, error) ||  /* exit */
        !ptrace_ok(ptrace(PTRACE_GETREGS, r->pid, NULL, &regs), "PTRACE_GETREGS", r, error))
        return false;
    *ret = (int64_t)regs.rax;
    return true;
}

void ss_remote_detach(SsRemote *r)
{
    if (!r)
        return;
    if (r->injected && ptrace(PTRACE_SETREGS, r->pid, NULL, &r->restore) == -1)
        g_warning("ptrace(PTRACE_SETREGS) restoring process %d failed: %s; it may crash",
                  (int)r->pid, g_strerror(errno));
    /* The first held signal goes with the detach; others again by kill. */
    int sig = r->n_held ? r->held[0] : 0;
    if (ptrace(PTRACE_DETACH, r->pid, NULL, (void *)(long)sig) == -1 && errno != ESRCH)
        g_warning("ptrace(PTRACE_DETACH) of process %d failed: %s", (int)r->pid,
                  g_strerror(errno));
    for (unsigned i = 1; i < r->n_held; i++)
        if (syscall(SYS_tgkill, r->pid, r->pid, r->held[i]) == -1)
            g_warning("re-sending signal %d to process %d failed: %s", r->held[i],
                      (int)r->pid, g_strerror(errno));
    g_free(r);
}

#else /* !__x86_64__ */

SsRemote *ss_remote_attach(pid_t pid, GError **error)
{
    g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_NOSYS,
                "running a system call in process %d is implemented for x86-64 only",
                (int)pid);
    return NULL;
}

bool ss_remote_syscall(SsRemote *r, long nr, const uint64_t args[6], int64_t *ret,
                       GError **error)
{
    (void)r, (void)nr, (void)args, (void)ret;
    g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_NOSYS, "not implemented on this architecture");
    return false;
}

void ss_remote_detach(SsRemote *r)
{
    (void)r;
}

#endif

/* 256 KiB of mincore vector covers 1 GiB of the region per call. */
#define VEC_BYTES (256u << 10)

static bool remote_call(SsRemote *r, long nr, const char *name, const uint64_t args[6],
                        int64_t *ret, GError **error)
{
    if (!ss_remote_syscall(r, nr, args, ret, error))
        return false;
    if (*ret < 0 && *ret > -4096) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno((int)-*ret),
                    "%s run in process %d failed: %s", name, (int)r->pid,
                    g_strerror((int)-*ret));
        return false;
    }
    return true;
}

bool ss_remote_madvise(pid_t pid, uint64_t addr, uint64_t len, int advice, GError **error)
{
    SsRemote *r = ss_remote_attach(pid, error);
    if (!r)
        return false;
    int64_t rc;
    bool ok = remote_call(r, SYS_madvise, "madvise", (uint64_t[6]){ addr, len, (uint64_t)advice },
                          &rc, error);
    ss_remote_detach(r);
    return ok;
}

bool ss_remote_mincore(pid_t pid, uint64_t addr, size_t pages, unsigned char *vec,
                       GError **error)
{
    SsRemote *r = ss_remote_attach(pid, error);
    if (!r)
        return false;
    int64_t scratch = 0, rc;
    bool ok = remote_call(r, SYS_mmap, "mmap of a scratch vector",
                          (uint64_t[6]){ 0, VEC_BYTES, PROT_READ | PROT_WRITE,
                                         MAP_PRIVATE | MAP_ANONYMOUS, (uint64_t)-1, 0 },
                          &scratch, error);
    for (size_t i = 0; ok && i < pages; i += VEC_BYTES) {
        size_t n = MIN((size_t)VEC_BYTES, pages - i);
        struct iovec local = { vec + i, n }, remote = { (void *)(uintptr_t)scratch, n };
        ok = remote_call(r, SYS_mincore, "mincore of the region",
                         (uint64_t[6]){ addr + i * 4096, n * 4096, (uint64_t)scratch }, &rc,
                         error);
        if (ok && process_vm_readv(pid, &local, 1, &remote, 1, 0) != (ssize_t)n) {
            g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                        "reading the mincore vector back from process %d failed: %s",
                        (int)pid, g_strerror(errno));
            ok = false;
        }
    }
    if (scratch > 0) {
        g_autoptr(GError) err = NULL;
        if (!remote_call(r, SYS_munmap, "munmap of the scratch vector",
                         (uint64_t[6]){ (uint64_t)scratch, VEC_BYTES }, &rc, &err))
            g_warning("%s (256 KiB left mapped in it)", err->message);
    }
    ss_remote_detach(r);
    return ok;
}
