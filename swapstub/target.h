/* Memory operations on the process that owns a region: direct calls for
 * this process, process_vm_{read,write}v and process_madvise for another. */
#ifndef SWAPSTUB_TARGET_H
#define SWAPSTUB_TARGET_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct {
    pid_t pid;           /* 0: ourselves */
    int pidfd;           /* -1 for ourselves */
    int pagemap_fd;
} Target;

bool target_open(Target *t, pid_t pid, GError **error);
void target_close(Target *t);
static inline bool target_is_self(const Target *t) { return t->pid == 0; }

bool target_write(Target *t, uint64_t addr, const void *buf, size_t len, GError **error);
bool target_read(Target *t, uint64_t addr, void *buf, size_t len, GError **error);
/* The first head_len bytes of each of n pages from addr into heads
 * (n * head_len bytes): every page is faulted in, as by a whole read, for
 * a fraction of the copying (process_vm_readv with one remote iovec per
 * page). */
bool target_read_heads(Target *t, uint64_t addr, size_t n, size_t head_len, void *heads,
                       GError **error);
/* The other way: heads[i] into the first head_len bytes of page i. */
bool target_write_heads(Target *t, uint64_t addr, size_t n, size_t head_len,
                        const void *heads, GError **error);
/* madvise on any target: another process's by process_madvise
 * (MADV_PAGEOUT, MADV_WILLNEED), MADV_POPULATE_READ by running madvise
 * inside it (remote-syscall.h; it stops one of its threads meanwhile); no
 * other advice on another process. */
bool target_madvise(Target *t, uint64_t addr, size_t len, int advice, GError **error);
/* mincore() of the pages at addr: bit 0 of vec[i] set if page i is in
 * memory or in the swap cache. Another process's is read by running the
 * call inside it (remote-syscall.h): it stops one of its threads for a
 * moment, and fails if it cannot be traced. */
bool target_mincore(Target *t, uint64_t addr, size_t pages, unsigned char *vec,
                    GError **error);
/* One /proc/PID/pagemap entry per page. */
bool target_pagemap(Target *t, uint64_t addr, size_t pages, uint64_t *out, GError **error);
/* The lines of /proc/PID/maps (pid 0: this process), NULL-terminated. */
GStrv target_maps_lines(pid_t pid, GError **error);
/* Check [addr, addr+len) lies in one private, writable, anonymous mapping. */
bool target_check_private_anon(Target *t, uint64_t addr, uint64_t len, GError **error);

#define PM_PRESENT (UINT64_C(1) << 63)
#define PM_SWAPPED (UINT64_C(1) << 62)
static inline unsigned pm_swap_type(uint64_t e) { return (unsigned)(e & 0x1f); }
static inline uint64_t pm_swap_offset(uint64_t e) { return (e >> 5) & ((UINT64_C(1) << 50) - 1); }

#endif
