/* The way back: pages whose content is local in nbd-pagesrv are swapped
 * in for good while the workload runs (background conversion), and finish
 * swaps in the rest and checks that nothing refers to the device. */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "swapstub-internal.h"

#define FINISH_CHUNK_PAGES 512         /* 2 MiB per step */
#define PREFETCH_CHUNKS 16             /* swap-in reads kept in flight ahead: 32 MiB */
#define FINISH_SWEEPS 5
#define STATES_PER_QUERY 65536

static bool swap_in(SwapStub *s, uint64_t first, uint64_t n, unsigned char *scratch,
                    GError **error)
{
    uint64_t addr = s->addr + first * SS_PAGE;
    if (target_is_self(&s->t))
        /* A write fault frees the slot as it swaps the page in. */
        return target_madvise(&s->t, addr, n * SS_PAGE, MADV_POPULATE_WRITE, error);
    /* Another process: only a read is safe (a write would race with the
     * guest); its slots are released by swapoff at teardown. */
    for (uint64_t i = 0; i < n; i += FINISH_CHUNK_PAGES) {
        uint64_t k = MIN((uint64_t)FINISH_CHUNK_PAGES, n - i);
        if (!target_read(&s->t, addr + i * SS_PAGE, scratch, k * SS_PAGE, error))
            return false;
    }
    return true;
}

/* Slot states 'R'emote, 'M'arker, 'L'ocal, 'E'mpty for slots [first, first+n). */
static char *slot_states(SwapStub *s, uint64_t first, uint64_t n, GError **error)
{
    GString *all = g_string_sized_new(n);
    for (uint64_t done = 0; done < n;) {
        uint64_t k = MIN((uint64_t)STATES_PER_QUERY, n - done);
        g_autofree char *cmd = g_strdup_printf("slot-states %" G_GUINT64_FORMAT " %"
                                               G_GUINT64_FORMAT, first + done, k);
        g_autofree char *ans = swapstub_control(s->control, cmd, error);
        const char *p = ans ? strstr(ans, "\"states\":\"") : NULL;
        if (!p) {
            if (ans)
                g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                            "unexpected answer to '%s': %s", cmd, ans);
            g_string_free(all, TRUE);
            return NULL;
        }
        p += strlen("\"states\":\"");
        const char *end = strchr(p, '"');
        if (!end || (uint64_t)(end - p) != k) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                        "nbd-pagesrv answered '%s' with the wrong number of states", cmd);
            g_string_free(all, TRUE);
            return NULL;
        }
        g_string_append_len(all, p, end - p);
        done += k;
    }
    return g_string_free(all, FALSE);
}

int64_t swapstub_convert_local(SwapStub *s, uint64_t max_pages, GError **error)
{
    uint64_t lo = UINT64_MAX, hi = 0;
    for (uint64_t i = 0; i < s->pages; i++) {
        if (s->converted[i])
            continue;
        lo = MIN(lo, s->slot[i]);
        hi = MAX(hi, s->slot[i]);
    }
    if (lo > hi)
        return 0;
    g_autofree char *states = slot_states(s, lo, hi - lo + 1, error);
    if (!states)
        return -1;
    g_autofree uint64_t *pm = g_new(uint64_t, s->pages);
    if (!target_pagemap(&s->t, s->addr, s->pages, pm, error))
        return -1;
    g_autofree unsigned char *scratch = g_malloc((size_t)FINISH_CHUNK_PAGES * SS_PAGE);
    int64_t converted = 0;
    for (uint64_t i = 0; i < s->pages && (!max_pages || (uint64_t)converted < max_pages);) {
        /* A run of pages still on the device whose data is already local. */
        bool ok = !s->converted[i] && (pm[i] & PM_SWAPPED) && pm_swap_type(pm[i]) == s->type &&
                  states[s->slot[i] - lo] != 'R' && states[s->slot[i] - lo] != 'M';
        if (!ok) {
            /* The workload faulted it in itself: nothing left to convert. */
            if (!s->converted[i] && !(pm[i] & PM_SWAPPED))
                s->converted[i] = true;
            i++;
            continue;
        }
        uint64_t j = i + 1;
        while (j < s->pages && j - i < FINISH_CHUNK_PAGES && !s->converted[j] &&
               (pm[j] & PM_SWAPPED) && pm_swap_type(pm[j]) == s->type &&
               states[s->slot[j] - lo] != 'R' && states[s->slot[j] - lo] != 'M')
            j++;
        if (!swap_in(s, i, j - i, scratch, error))
            return -1;
        for (uint64_t k = i; k < j; k++)
            s->converted[k] = true;
        converted += (int64_t)(j - i);
        i = j;
    }
    return converted;
}

int64_t swapstub_pages_on_device(SwapStub *s, GError **error)
{
    g_autofree uint64_t *pm = g_new(uint64_t, s->pages);
    if (!target_pagemap(&s->t, s->addr, s->pages, pm, error))
        return -1;
    int64_t n = 0;
    for (uint64_t i = 0; i < s->pages; i++)
        if ((pm[i] & PM_SWAPPED) && pm_swap_type(pm[i]) == s->type)
            n++;
    return n;
}

/* MADV_WILLNEED on swapped-out anonymous memory starts the swap-in reads
 * without waiting for them (the kernel's swapin_walk): the synchronous
 * swap-in that follows then finds the pages in the swap cache. Without it
 * finishing took one device round trip per page (measured: 0.05 GiB/s). A
 * failure only costs speed. */
static void prefetch(SwapStub *s, uint64_t first, uint64_t n)
{
    g_autoptr(GError) err = NULL;
    if (n && !target_madvise(&s->t, s->addr + first * SS_PAGE, n * SS_PAGE, MADV_WILLNEED, &err))
        g_debug("swapstub: prefetch: %s", err->message);
}

bool swapstub_finish(SwapStub *s, bool wait_all_local, SwapStubProgress progress,
                     void *opaque, GError **error)
{
    if (wait_all_local) {
        g_autofree char *ans = swapstub_control(s->control, "wait-all-local", error);
        if (!ans)
            return false;
    }
    g_autofree unsigned char *scratch = g_malloc((size_t)FINISH_CHUNK_PAGES * SS_PAGE);
    gint64 t0 = g_get_monotonic_time();
    uint64_t ahead = MIN(s->pages, (uint64_t)PREFETCH_CHUNKS * FINISH_CHUNK_PAGES);
    prefetch(s, 0, ahead);
    for (uint64_t i = 0; i < s->pages; i += FINISH_CHUNK_PAGES) {
        uint64_t n = MIN((uint64_t)FINISH_CHUNK_PAGES, s->pages - i);
        /* Keep the window of reads in flight PREFETCH_CHUNKS ahead. */
        if (ahead < s->pages) {
            uint64_t more = MIN((uint64_t)FINISH_CHUNK_PAGES, s->pages - ahead);
            prefetch(s, ahead, more);
            ahead += more;
        }
        if (!swap_in(s, i, n, scratch, error))
            return false;
        if (progress) {
            double secs = (double)(g_get_monotonic_time() - t0) / 1e6;
            double mib_s = secs > 0 ? (double)((i + n) * SS_PAGE) / 1048576.0 / secs : 0;
            double eta = i + n < s->pages && secs > 0
                             ? secs * (double)(s->pages - i - n) / (double)(i + n) : 0;
            progress(opaque, i + n, s->pages, mib_s, eta);
        }
    }
    memset(s->converted, 1, s->pages * sizeof(bool));
    if (!target_is_self(&s->t))
        return true;   /* read faults keep their slots until swapoff */
    /* Until the device is detached it is the top-priority swap device, so
     * the kernel (reclaim, or a DAMON page-out scheme) may page some of the
     * region out to it again right after it was swapped in: sweep the
     * stragglers a few times before calling it a failure. */
    int64_t left = 0;
    for (int sweep = 0; sweep < FINISH_SWEEPS; sweep++) {
        g_autofree uint64_t *pm = g_new(uint64_t, s->pages);
        if (!target_pagemap(&s->t, s->addr, s->pages, pm, error))
            return false;
        left = 0;
        for (uint64_t i = 0; i < s->pages; i++) {
            if (!(pm[i] & PM_SWAPPED) || pm_swap_type(pm[i]) != s->type)
                continue;
            left++;
            if (!swap_in(s, i, 1, scratch, error))
                return false;
        }
        if (left == 0)
            return true;
    }
    g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                "%" G_GINT64_FORMAT " pages of the region still refer to %s after finishing "
                "and %d sweeps: is something paging this memory out as fast as it comes in?",
                left, s->device, FINISH_SWEEPS);
    return false;
}
