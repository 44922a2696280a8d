/* Arming with MADV_SWAPSTUB (mm-patch-madvise): the kernel allocates a
 * fresh slot on the stub-only swap device for every untouched page and
 * installs a swap entry for it. No markers, no I/O, nothing in the swap
 * cache: what remains is reading the slots from pagemap and registering
 * them with nbd-pagesrv, as the stock path does (arm.c). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "swapstub-internal.h"

#ifndef SYS_process_madvise
#define SYS_process_madvise 440
#endif

/* The advice number the kernel announces, or -1 with *error set. */
static int madv_swapstub_number(GError **error)
{
    g_autofree char *text = NULL;
    g_autoptr(GError) err = NULL;
    if (!g_file_get_contents(SWAPSTUB_SYSFS, &text, NULL, &err)) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                    "cannot read %s: %s (a kernel with mm-patch-madvise provides it)",
                    SWAPSTUB_SYSFS, err->message);
        return -1;
    }
    char *end = NULL;
    long n = strtol(text, &end, 10);
    if (end == text || (*end && *end != '\n') || n <= 0 || n > 1000) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                    "%s holds '%s', not an madvise advice number: a kernel with another "
                    "version of mm-patch-madvise?", SWAPSTUB_SYSFS, g_strchomp(text));
        return -1;
    }
    return (int)n;
}

static const char *method_override(void)
{
    const char *m = g_getenv("SWAPSTUB_ARM_METHOD");
    return m && *m ? m : "auto";
}

/* MADV_SWAPSTUB of one scratch page of our own: which swap type does the
 * kernel allocate on? -1 if there is no stub-only device (ENODEV). */
static bool probe_stub_type(int advice, int *type, GError **error)
{
    void *p = mmap(NULL, SS_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "mmap of a scratch page to probe MADV_SWAPSTUB failed: %s",
                    g_strerror(errno));
        return false;
    }
    bool ok = true;
    if (madvise(p, SS_PAGE, advice) < 0) {
        if (errno == ENODEV) {
            *type = -1;
        } else {
            g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                        "MADV_SWAPSTUB (%d) on a scratch page failed: %s (needs root: "
                        "CAP_SYS_ADMIN)", advice, g_strerror(errno));
            ok = false;
        }
    } else {
        Target self = { .pid = 0, .pidfd = -1, .pagemap_fd = -1 };
        uint64_t pm = 0;
        ok = target_open(&self, 0, error) &&
             target_pagemap(&self, (uint64_t)(uintptr_t)p, 1, &pm, error);
        target_close(&self);
        if (ok && !(pm & PM_SWAPPED)) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                        "MADV_SWAPSTUB succeeded on a scratch page but pagemap shows it not "
                        "swapped out (0x%" G_GINT64_MODIFIER "x): this kernel's MADV_SWAPSTUB "
                        "is not the one libswapstub knows", pm);
            ok = false;
        }
        if (ok)
            *type = (int)pm_swap_type(pm);
    }
    /* Frees the probe's slot. */
    munmap(p, SS_PAGE);
    return ok;
}

int swapstub_madvise_choose(const SwapStub *s, int *advice, GError **error)
{
    const char *m = method_override();
    if (strcmp(m, "stock") == 0)
        return 0;
    bool forced = strcmp(m, "madv_swapstub") == 0;
    if (!forced && strcmp(m, "auto") != 0) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                    "SWAPSTUB_ARM_METHOD is '%s': use auto, stock or madv_swapstub", m);
        return -1;
    }
    if (!swapstub_kernel_has_madv_swapstub()) {
        if (!forced)
            return 0;
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_NOSYS,
                    "SWAPSTUB_ARM_METHOD=madv_swapstub, but this kernel has no %s: boot a "
                    "kernel with mm-patch-madvise (make kernel)", SWAPSTUB_SYSFS);
        return -1;
    }
    int type = -1;
    if ((*advice = madv_swapstub_number(error)) < 0 || !probe_stub_type(*advice, &type, error))
        return -1;
    if (type < 0) {
        if (!forced) {
            g_message("swapstub: this kernel offers MADV_SWAPSTUB, but no swap device is "
                      "stub-only (setup-swap.sh --stub); arming %s the stock-kernel way",
                      s->device);
            return 0;
        }
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_NODEV,
                    "SWAPSTUB_ARM_METHOD=madv_swapstub, but no swap device is stub-only: set "
                    "%s up with setup-swap.sh --stub (swapon with SWAP_FLAG_STUB)", s->device);
        return -1;
    }
    if ((unsigned)type != s->type) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                    "MADV_SWAPSTUB allocates on swap type %d, not on %s (type %u): another "
                    "stub-only device has a higher priority; swapoff it or give %s the "
                    "highest (32767)", type, s->device, s->type, s->device);
        return -1;
    }
    return 1;
}

/* MADV_SWAPSTUB over the region, through process_madvise for another
 * process (the kernel accepts it there with PTRACE_MODE_ATTACH). */
static bool madvise_region(SwapStub *s, int advice, GError **error)
{
    uint64_t len = s->pages * SS_PAGE, done = 0;
    while (done < len) {
        long n;
        if (target_is_self(&s->t)) {
            n = madvise((void *)(uintptr_t)(s->addr + done), len - done, advice) == 0
                    ? (long)(len - done) : -1;
        } else {
            struct iovec iov = { (void *)(uintptr_t)(s->addr + done), len - done };
            n = syscall(SYS_process_madvise, s->t.pidfd, &iov, 1, advice, 0);
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int err = n < 0 ? errno : EIO;
            const char *hint =
                err == EEXIST ? "some pages of the region were touched meanwhile" :
                err == ENOSPC ? "the stub device is full: make it larger (setup-swap.sh --size)" :
                err == ENODEV ? "the stub device went away (swapoff?)" :
                err == EPERM ? "needs root (CAP_SYS_ADMIN; for another process also "
                               "CAP_SYS_NICE and ptrace access)" :
                err == ENOMEM ? "out of memory for page tables, or the memory cgroup's swap "
                                "limit (memory.swap.max) is reached" : "see docs/swapstub.md";
            g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err),
                        "%s(MADV_SWAPSTUB) of %" G_GUINT64_FORMAT " bytes at 0x%"
                        G_GINT64_MODIFIER "x of %s%d failed: %s (%s)",
                        target_is_self(&s->t) ? "madvise" : "process_madvise", len - done,
                        s->addr + done, target_is_self(&s->t) ? "this process" : "process ",
                        target_is_self(&s->t) ? getpid() : (int)s->t.pid, g_strerror(err), hint);
            return false;
        }
        done += (uint64_t)n;
    }
    return true;
}

/* Every page must be untouched (pagemap entry 0): MADV_SWAPSTUB arms only
 * those. Our own region is emptied first (arming replaces its content
 * anyway); another process's must not have been touched. */
static bool check_untouched(SwapStub *s, uint64_t *pm, GError **error)
{
    if (target_is_self(&s->t) &&
        madvise((void *)(uintptr_t)s->addr, s->pages * SS_PAGE, MADV_DONTNEED) < 0) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "MADV_DONTNEED of the region before arming failed: %s", g_strerror(errno));
        return false;
    }
    if (!target_pagemap(&s->t, s->addr, s->pages, pm, error))
        return false;
    uint64_t touched = 0, first = 0;
    for (uint64_t i = 0; i < s->pages; i++)
        if (pm[i] & (PM_PRESENT | PM_SWAPPED)) {
            if (!touched++)
                first = i;
        }
    if (touched) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_EXIST,
                    "%" G_GUINT64_FORMAT " pages of the region (first: page %" G_GUINT64_FORMAT
                    ") in %s%d are already populated, and MADV_SWAPSTUB arms only untouched "
                    "memory: arm before the process touches the region, or set the device up "
                    "with setup-swap.sh --no-stub to arm the stock-kernel way", touched, first,
                    target_is_self(&s->t) ? "this process, pid " : "process ",
                    target_is_self(&s->t) ? (int)getpid() : (int)s->t.pid);
        return false;
    }
    return true;
}

bool swapstub_arm_madvise(SwapStub *s, int advice, bool map_later, SwapStubArmReport *r,
                          GError **error)
{
    g_autofree uint64_t *pm = g_new(uint64_t, s->pages);
    r->method = "madv_swapstub";
    if (!check_untouched(s, pm, error))
        return false;
    /* No MADV_NOHUGEPAGE: the region is untouched, so it has no huge page
     * to split, and its THP setting stays the caller's. */
    if (!madvise_region(s, advice, error))
        goto undo;
    if (!target_pagemap(&s->t, s->addr, s->pages, pm, error))
        goto undo;
    for (uint64_t i = 0; i < s->pages; i++) {
        if (!(pm[i] & PM_SWAPPED) || pm_swap_type(pm[i]) != s->type) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                        "after MADV_SWAPSTUB, page %" G_GUINT64_FORMAT " is not on %s "
                        "(pagemap 0x%" G_GINT64_MODIFIER "x): the region was touched during "
                        "arming, or the stub device changed", i, s->device, pm[i]);
            goto undo;
        }
        s->slot[i] = pm_swap_offset(pm[i]);
    }
    if (!swapstub_daemon_marker_reads(s, &s->marker_reads, error))
        goto undo;
    r->marker_reads = s->marker_reads;
    if (map_later)
        return true;
    /* swapstub_map() leaves the region disarmed (zeros) if it fails. */
    return swapstub_map(s, r, error);

undo:
    swapstub_disarm(s);
    return false;
}
