/* Making this CPU's next swap slots come from the highest-priority device.
 *
 * The kernel (since the allocator rework, 6.15 as far as we know:
 * percpu_swap_cluster, swap_alloc_fast) keeps,
 * per CPU and per folio order, the swap cluster it last allocated from,
 * and takes the next slots from it whatever the devices' priorities; only
 * once that cluster is used up does it choose again, by priority. So a
 * swap device set up after another device's cluster was cached gets none
 * of this CPU's page-outs until then: up to 511 pages of a region armed
 * right after another migration's went to the older device (seen here:
 * the ROM blocks of a second patched QEMU; and on any host whose own swap
 * was used last). Only swapoff clears these caches.
 *
 * So before arming, the arming thread pins itself to the CPU it is on, and
 * pages out zero-filled scratch pages (recorded without I/O on kernels
 * with the zeromap, written as a few zero pages elsewhere) until the
 * kernel has chosen by priority at least once: a change of swap type
 * means the new one was chosen so; 513 pages on one type mean the cached
 * cluster cannot have held them all, so that type was chosen so too. Then
 * the same for 2 MiB folios (order 9), which use up a cluster each. While
 * the device stays the highest (the preparation lock keeps others from
 * setting one up), this CPU's page-outs all go to it. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "swapstub-internal.h"

#define CLUSTER_PAGES 512u          /* SWAPFILE_CLUSTER */
#define HUGE (CLUSTER_PAGES * SS_PAGE)
#define BATCH 32u

/* Swap type of each page of [p, p + n pages), -1 if not swapped out. */
static bool scratch_types(const unsigned char *p, size_t n, int *types, GError **error)
{
    Target self = { .pid = 0, .pidfd = -1 };
    if (!target_open(&self, 0, error))
        return false;
    g_autofree uint64_t *pm = g_new(uint64_t, n);
    bool ok = target_pagemap(&self, (uint64_t)(uintptr_t)p, n, pm, error);
    target_close(&self);
    for (size_t i = 0; ok && i < n; i++)
        types[i] = (pm[i] & PM_SWAPPED) ? (int)pm_swap_type(pm[i]) : -1;
    return ok;
}

/* Fault n zero pages in, page them out, note where they went, free them. */
static bool pageout_zeros(unsigned char *p, size_t n, int *types, GError **error)
{
    for (size_t i = 0; i < n; i++)
        ((volatile unsigned char *)p)[i * SS_PAGE] = 0;   /* a real, zero-filled page */
    if (!swapstub_drain_lru_batches(error))
        return false;
    if (madvise(p, n * SS_PAGE, MADV_PAGEOUT) < 0) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "MADV_PAGEOUT of scratch pages failed: %s", g_strerror(errno));
        return false;
    }
    bool ok = scratch_types(p, n, types, error);
    if (madvise(p, n * SS_PAGE, MADV_DONTNEED) < 0 && ok) {   /* frees the slots */
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "MADV_DONTNEED of scratch pages failed: %s", g_strerror(errno));
        ok = false;
    }
    return ok;
}

/* Order 0: until a type change has been followed by one more page, or
 * more pages than a cluster holds went to one type. */
static int prime_small(unsigned char *p, GError **error)
{
    int types[BATCH], first = -1, last = -1;
    unsigned same = 0;
    bool changed = false;
    for (unsigned round = 0; round < 4 * CLUSTER_PAGES / BATCH; round++) {
        if (!pageout_zeros(p, BATCH, types, error))
            return -1;
        for (unsigned i = 0; i < BATCH; i++) {
            if (types[i] < 0)
                continue;             /* not isolated this time */
            if (last >= 0 && types[i] != last) {
                if (changed) {
                    g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                                "scratch page-outs moved from swap type %d to %d and then to "
                                "%d: another swap device was set up meanwhile", first, last,
                                types[i]);
                    return -1;
                }
                changed = true;
                first = last;
                same = 0;
            }
            last = types[i];
            same++;
            if ((changed && same >= 2) || same > CLUSTER_PAGES)
                return last;
        }
    }
    g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                "scratch pages would not page out (%u went to swap type %d): is swap full, "
                "or memory locked?", same, last);
    return -1;
}

/* Order 9: one 2 MiB folio uses up a cluster, so the second one is placed
 * by priority; it must land where the small pages now do. */
static bool prime_huge(unsigned char *p, int type, GError **error)
{
    if (madvise(p, HUGE, MADV_HUGEPAGE) < 0)
        return true;                  /* no THP here: nothing cached for order 9 */
    int types[CLUSTER_PAGES];
    for (int round = 0; round < 2; round++) {
        if (!pageout_zeros(p, CLUSTER_PAGES, types, error))
            return false;
    }
    for (unsigned i = 0; i < CLUSTER_PAGES; i++) {
        if (types[i] >= 0 && types[i] != type) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                        "a scratch huge page went to swap type %d after the small ones went "
                        "to %d: another swap device was set up meanwhile", types[i], type);
            return false;
        }
    }
    return true;
}

bool swapstub_pin_here(SwapStubPin *pin, GError **error)
{
    memset(pin, 0, sizeof *pin);
    int cpu = sched_getcpu();
    if (cpu < 0 || sched_getaffinity(0, sizeof pin->saved, &pin->saved) < 0) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot tell which CPU the arming thread runs on: %s", g_strerror(errno));
        return false;
    }
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (sched_setaffinity(0, sizeof one, &one) < 0) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot pin the arming thread to CPU %d: %s", cpu, g_strerror(errno));
        return false;
    }
    pin->pinned = true;
    return true;
}

int swapstub_prime_swap_alloc(SwapStubPin *pin, GError **error)
{
    if (!swapstub_pin_here(pin, error))
        return -1;
    /* Room for a 2 MiB-aligned huge page after the small scratch pages. */
    size_t len = 3 * HUGE;
    unsigned char *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                              -1, 0);
    if (map == MAP_FAILED) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "mmap of %zu bytes of scratch memory failed: %s", len, g_strerror(errno));
        swapstub_unpin(pin);
        return -1;
    }
    unsigned char *huge = (unsigned char *)(((uintptr_t)map + HUGE + HUGE - 1) & ~(uintptr_t)(HUGE - 1));
    int type = -1;
    if (madvise(map, (size_t)(huge - map), MADV_NOHUGEPAGE) == 0)
        type = prime_small(map, error);
    else
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "MADV_NOHUGEPAGE of scratch memory failed: %s", g_strerror(errno));
    if (type >= 0 && !prime_huge(huge, type, error))
        type = -1;
    if (munmap(map, len) < 0)
        g_warning("munmap of the swap priming scratch memory failed: %s", g_strerror(errno));
    if (type < 0)
        swapstub_unpin(pin);
    return type;
}

void swapstub_unpin(SwapStubPin *pin)
{
    if (pin->pinned && sched_setaffinity(0, sizeof pin->saved, &pin->saved) < 0)
        g_warning("restoring the arming thread's CPU affinity failed: %s", g_strerror(errno));
    pin->pinned = false;
}
