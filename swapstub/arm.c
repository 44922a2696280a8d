/* Arming on a stock kernel (kernel-facts.md, "Setting an anonymous region
 * up as swapped out"): markers, pageout, slots from pagemap, eviction of
 * the swap cache, mapping registered with nbd-pagesrv, verification. */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "swapstub-internal.h"
#include "swapstub-marker.h"

#define BATCH_PAGES 1024               /* pages per marker write or read-back (UIO_MAXIOV) */
#define MARKER_WAIT_US (30 * G_USEC_PER_SEC)
#define PAGEMAP_BATCH 32768            /* pagemap entries per read (256 KiB) */

SwapStub *swapstub_new(const SwapStubConfig *cfg, GError **error)
{
    if (!cfg->control || !cfg->device || !cfg->export_name) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                    "arming needs the control socket, the swap device and the export name");
        return NULL;
    }
    if (cfg->addr % SS_PAGE || cfg->len % SS_PAGE || cfg->len == 0) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                    "region 0x%" G_GINT64_MODIFIER "x+%" G_GUINT64_FORMAT " is not a non-empty "
                    "range of whole 4 KiB pages", cfg->addr, cfg->len);
        return NULL;
    }
    SwapStub *s = g_new0(SwapStub, 1);
    s->t.pidfd = s->t.pagemap_fd = -1;
    if (!target_open(&s->t, cfg->pid, error)) {
        g_free(s);
        return NULL;
    }
    s->addr = cfg->addr;
    s->pages = cfg->len / SS_PAGE;
    s->control = g_strdup(cfg->control);
    s->device = g_strdup(cfg->device);
    s->export_name = g_strdup(cfg->export_name);
    s->export_page = cfg->export_page;
    s->slot = g_new0(uint64_t, s->pages);
    s->converted = g_new0(bool, s->pages);
    /* SWAPSTUB_EVICT_CHECK=global: another process's eviction checked as
     * before mincore could be run in it (tests compare the two). */
    s->global_check = !target_is_self(&s->t) &&
                      g_strcmp0(g_getenv("SWAPSTUB_EVICT_CHECK"), "global") == 0;
    return s;
}

void swapstub_free(SwapStub *s)
{
    if (!s)
        return;
    swapstub_unpin(&s->pin);
    target_close(&s->t);
    g_free(s->control);
    g_free(s->device);
    g_free(s->export_name);
    g_free(s->slot);
    g_free(s->converted);
    g_free(s);
}

uint64_t swapstub_pages(const SwapStub *s)
{
    return s->pages;
}

static uint64_t page_addr(const SwapStub *s, uint64_t i)
{
    return s->addr + i * SS_PAGE;
}

/* Pages [first, first+n) of the region: arming works through it one
 * chunk at a time (see ARM_CHUNK_BYTES). */
typedef struct {
    uint64_t first, n;
} Span;

static Span whole(const SwapStub *s)
{
    return (Span){ 0, s->pages };
}

/* A marker is its 32-byte header, then zeros. A page the process has
 * never touched (pagemap: neither present nor swapped) reads as zeros, so
 * its header is all there is to write: 32 bytes instead of 4096 (for
 * another process, one process_vm_writev iovec per page). A touched page
 * gets the whole marker. */
static bool write_markers(SwapStub *s, uint64_t cookie, Span sp, GError **error)
{
    g_autofree uint64_t *pm = g_new(uint64_t, BATCH_PAGES);
    g_autofree unsigned char *page = g_malloc(SS_PAGE);
    g_autofree unsigned char *heads = g_malloc((size_t)BATCH_PAGES * SWAPSTUB_MARKER_HEAD);
    for (uint64_t i = sp.first; i < sp.first + sp.n; i += BATCH_PAGES) {
        uint64_t n = MIN((uint64_t)BATCH_PAGES, sp.first + sp.n - i);
        if (!target_pagemap(&s->t, page_addr(s, i), n, pm, error))
            return false;
        for (uint64_t j = 0; j < n;) {
            uint64_t k = j;
            while (k < n && !(pm[k] & (PM_PRESENT | PM_SWAPPED))) {
                swapstub_marker_head(heads + (k - j) * SWAPSTUB_MARKER_HEAD, cookie, i + k,
                                     SWAPSTUB_ORIGIN_WRITTEN);
                k++;
            }
            if (k > j && !target_write_heads(&s->t, page_addr(s, i + j), k - j,
                                             SWAPSTUB_MARKER_HEAD, heads, error))
                return false;
            if (k < n) {           /* touched: the whole page */
                swapstub_marker_fill(page, cookie, i + k, SWAPSTUB_ORIGIN_WRITTEN);
                if (!target_write(&s->t, page_addr(s, i + k), page, SS_PAGE, error))
                    return false;
                k++;
            }
            j = k;
        }
    }
    return true;
}

static bool daemon_stat(SwapStub *s, const char *key, uint64_t *out, GError **error)
{
    g_autofree char *st = swapstub_control(s->control, "stats", error);
    if (!st)
        return false;
    if (!json_u64(st, key, out)) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                    "nbd-pagesrv at %s does not report %s: is it an older version?",
                    s->control, key);
        return false;
    }
    return true;
}

static bool daemon_marker_pages(SwapStub *s, uint64_t *out, GError **error)
{
    return daemon_stat(s, "marker_pages", out, error);
}

bool swapstub_daemon_marker_reads(SwapStub *s, uint64_t *out, GError **error)
{
    return daemon_stat(s, "marker_reads", out, error);
}

/* A page the pass could not isolate was not written: page the region out
 * again (pages already out are skipped by the kernel). */
static bool pageout_again(SwapStub *s, Span sp, GError **error)
{
    return swapstub_drain_lru_batches(error) &&
           target_madvise(&s->t, page_addr(s, sp.first), sp.n * SS_PAGE, MADV_PAGEOUT, error);
}

/* The kernel may still be writing markers when MADV_PAGEOUT returns, and a
 * page under writeback cannot leave the swap cache: wait until the daemon
 * has every one. */
static bool wait_markers_written(SwapStub *s, uint64_t want, Span sp, GError **error)
{
    gint64 start = g_get_monotonic_time(), deadline = start + MARKER_WAIT_US;
    gint64 next_pass = start + G_USEC_PER_SEC;
    uint64_t have = 0;
    for (;;) {
        if (!daemon_marker_pages(s, &have, error))
            return false;
        if (have >= want)
            return true;
        gint64 now = g_get_monotonic_time();
        if (now > deadline)
            break;
        if (now > next_pass) {
            if (!pageout_again(s, sp, error))
                return false;
            next_pass = now + G_USEC_PER_SEC;
        }
        g_usleep(1000);
    }
    g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                "%" G_GUINT64_FORMAT " marker pages (of the %" G_GUINT64_FORMAT " from page %"
                G_GUINT64_FORMAT " on) did not reach nbd-pagesrv within %d s: is %s the "
                "highest-priority swap device, and is zswap off?%s", want - MIN(have, want),
                sp.n, sp.first, (int)(MARKER_WAIT_US / G_USEC_PER_SEC),
                s->device, swapstub_kernel_has_madv_swapstub()
                    ? " Or is it stub-only (setup-swap.sh --stub), where swap-out never "
                      "writes: arm it with MADV_SWAPSTUB (unset SWAPSTUB_ARM_METHOD)" : "");
    return false;
}

/* The swap type the first chunk went to is the device's: it was the
 * highest-priority device, before and after, so it took every page-out,
 * and it now holds at least those pages. (Its line number in /proc/swaps
 * is not its type once a lower type has been swapped off.) */
static bool learn_type(SwapStub *s, unsigned type, uint64_t pages, GError **error)
{
    SwapDevInfo dev;
    if (!swapdev_lookup(s->device, &dev, error))
        return false;
    if (!dev.top || dev.used_pages < pages) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                    "the region's pages went to swap type %u, which cannot be %s (%s): another "
                    "swap device was set up with a higher priority while it was being armed; "
                    "set up and arm one migration at a time (swapcopy-migrate and the patched "
                    "QEMU hold a lock for it)", type, s->device,
                    dev.top ? "it holds fewer pages" : "it is not the highest priority now");
        return false;
    }
    s->type = type;
    s->type_known = true;
    return true;
}

/* Record every page's slot; pages not swapped yet are paged out again. */
static bool collect_slots(SwapStub *s, Span sp, GError **error)
{
    g_autofree uint64_t *pm = g_new(uint64_t, sp.n);
    for (int attempt = 0;; attempt++) {
        if (!target_pagemap(&s->t, page_addr(s, sp.first), sp.n, pm, error))
            return false;
        uint64_t missing = 0, first_missing = 0;
        /* Every page must be where the primed scratch pages went (or the
         * type given): learnt for good from the first chunk. */
        unsigned type = s->type;
        for (uint64_t i = 0; i < sp.n; i++) {
            if (!(pm[i] & PM_SWAPPED)) {
                if (!missing++)
                    first_missing = sp.first + i;
                continue;
            }
            if (type == SS_TYPE_UNSET)
                type = s->type = pm_swap_type(pm[i]);
            if (pm_swap_type(pm[i]) != type) {
                g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                            "page %" G_GUINT64_FORMAT " went to swap type %u, not to %s (type "
                            "%u): another swap device has the same or higher priority; %s "
                            "must have the highest (setup-swap.sh gives it that)", sp.first + i,
                            pm_swap_type(pm[i]), s->device, type, s->device);
                return false;
            }
            s->slot[sp.first + i] = pm_swap_offset(pm[i]);
        }
        if (!missing)
            return s->type_known || learn_type(s, type, sp.n, error);
        if (attempt == 3) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                        "%" G_GUINT64_FORMAT " pages (first: %" G_GUINT64_FORMAT ") would not "
                        "swap out after 4 MADV_PAGEOUT passes: are they locked (mlock) or "
                        "pinned?", missing, first_missing);
            return false;
        }
        if (!pageout_again(s, sp, error))
            return false;
        g_usleep(10000);
    }
}

/* mincore sees the swap cache (our own directly, another process's by
 * running the call inside it): only the cached pages are faulted in, from
 * the cache (no device reads; MADV_POPULATE_READ, run inside another
 * process too), and paged out again, which drops them.
 * Returns how many pages were still cached; -1 on error, -2 if another
 * process's mincore cannot be had (then *error says why). */
static int64_t evict_by_mincore(SwapStub *s, Span sp, GError **error)
{
    g_autofree unsigned char *vec = g_malloc(sp.n);
    if (!target_mincore(&s->t, page_addr(s, sp.first), sp.n, vec, error))
        return target_is_self(&s->t) ? -1 : -2;
    int64_t cached = 0;
    for (uint64_t i = 0; i < sp.n;) {
        if (!(vec[i] & 1)) {
            i++;
            continue;
        }
        uint64_t j = i;
        while (j < sp.n && (vec[j] & 1))
            j++;
        cached += (int64_t)(j - i);
        size_t len = (j - i) * SS_PAGE;
        uint64_t at = page_addr(s, sp.first + i);
        if (!target_madvise(&s->t, at, len, MADV_POPULATE_READ, error) ||
            !target_madvise(&s->t, at, len, MADV_PAGEOUT, error))
            return -1;
        i = j;
    }
    return cached;
}

/* Another process: read every page back (its swap cache cannot be
 * inspected page by page), which maps each one again; a page still showing
 * the marker we wrote came from the swap cache, one flagged by nbd-pagesrv
 * came from the device. Only each marker's header is copied (magic,
 * cookie, index, origin): the read faults are what evicts, and a whole
 * read of 1 GiB plus its parse cost more than the faults did; that nothing
 * else wrote the region is proven afterwards by the slots in pagemap. Then
 * page everything out again, in one pass after all the reads: a read from
 * the device also brings its neighbours into the swap cache (readahead),
 * and a neighbour already paged out would stay there, unmapped, where no
 * later pass reaches it. */
static int64_t evict_remote(SwapStub *s, uint64_t cookie, Span sp, GError **error)
{
    enum { WORDS = SWAPSTUB_MARKER_HEAD / sizeof(uint64_t) };
    g_autofree uint64_t *head = g_malloc((size_t)BATCH_PAGES * SWAPSTUB_MARKER_HEAD);
    int64_t cached = 0;
    for (uint64_t i = sp.first; i < sp.first + sp.n; i += BATCH_PAGES) {
        uint64_t n = MIN((uint64_t)BATCH_PAGES, sp.first + sp.n - i);
        if (!target_read_heads(&s->t, page_addr(s, i), n, SWAPSTUB_MARKER_HEAD, head, error))
            return -1;
        for (uint64_t j = 0; j < n; j++) {
            const uint64_t *w = head + j * WORDS;
            if (w[0] != SWAPSTUB_MARKER_MAGIC || w[1] != cookie || w[2] != i + j ||
                (w[3] != SWAPSTUB_ORIGIN_WRITTEN && w[3] != SWAPSTUB_ORIGIN_DEVICE)) {
                g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                            "page %" G_GUINT64_FORMAT " of the region holds neither our marker "
                            "nor the device's: something wrote to the region while it was "
                            "being armed (the guest must not run before arming completes)",
                            i + j);
                return -1;
            }
            if (w[3] == SWAPSTUB_ORIGIN_WRITTEN)
                cached++;
        }
    }
    if (!pageout_again(s, sp, error))
        return -1;
    return cached;
}

/* The global swap cache is back to what it was before arming (the swap
 * device is dedicated, so what remains would be ours). */
static bool swap_cache_settled(int64_t baseline)
{
    for (int i = 0; i < 500; i++) {
        int64_t now = swapdev_swap_cached_pages();
        if (now >= 0 && now <= baseline)
            return true;
        g_usleep(2000);
    }
    return false;
}

/* Pages still under writeback cannot leave the swap cache yet (the device
 * acknowledged them, but the kernel may not have finished completing the
 * I/O): retry with growing pauses until the time budget is spent. */
static bool evict(SwapStub *s, uint64_t cookie, Span sp, unsigned max_rounds,
                  int64_t baseline, bool mapped, SwapStubArmReport *r, GError **error)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)max_rounds * G_USEC_PER_SEC;
    gulong pause = 1000;
    int64_t cached = 0;
    for (unsigned round = 1;; round++) {
        if (!swapstub_drain_lru_batches(error))
            return false;
        if (!s->global_check) {
            g_autoptr(GError) why = NULL;
            cached = evict_by_mincore(s, sp, &why);
            if (cached == -2 && mapped) {
                /* Reading every page back would now fetch the source's. */
                g_propagate_error(error, g_steal_pointer(&why));
                return false;
            } else if (cached == -2) {
                /* Without mincore only the system-wide count can tell: it
                 * refuses whenever other processes swap meanwhile. */
                g_warning("arming process %d: %s; checking the system's SwapCached instead, "
                          "which fails if other processes swap meanwhile", (int)s->t.pid,
                          why->message);
                s->global_check = true;
            } else if (cached < 0) {
                g_propagate_error(error, g_steal_pointer(&why));
                return false;
            }
        }
        if (s->global_check && (cached = evict_remote(s, cookie, sp, error)) < 0)
            return false;
        g_debug("eviction round %u: %" G_GINT64_FORMAT " pages still cached, SwapCached %"
                G_GINT64_FORMAT " (%" G_GINT64_FORMAT " before arming)", round, cached,
                swapdev_swap_cached_pages(), baseline);
        if (round == 1 && !mapped)
            r->still_cached_first += (uint64_t)cached;
        if (!mapped)
            r->rounds = MAX(r->rounds, round);
        /* Another process: the round mapped every page and paged it out
         * again, so the region's pages are out of the swap cache once the
         * global count is back to its level before arming. Asking also
         * that no page came from the cache, as before, cost a second round
         * that read the whole region back from the device to learn
         * nothing: 6 of the 10 s arming took for 1 GiB. */
        if (!s->global_check ? cached == 0 : swap_cache_settled(baseline))
            return true;
        if (g_get_monotonic_time() > deadline)
            break;
        g_usleep(pause);
        pause = MIN(pause * 2, 200000ul);
    }
    if (!s->global_check)
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                    "%" G_GINT64_FORMAT " pages of the region were still in the swap cache after "
                    "%u s of eviction rounds (is the region locked, or the device very slow?)",
                    cached, max_rounds);
    else
        /* Another process's swap cache cannot be inspected page by page:
         * the global count must come back to where it was. */
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                    "the system's swap cache (SwapCached: %" G_GINT64_FORMAT " pages) did not "
                    "fall back to its level before arming (%" G_GINT64_FORMAT ") within %u s, so "
                    "pages of process %d may still be cached: is another process swapping? "
                    "Arm again when swap is quiet", swapdev_swap_cached_pages(), baseline,
                    max_rounds, (int)s->t.pid);
    return false;
}

bool swapstub_register_mapping(SwapStub *s, SwapStubArmReport *r, GError **error)
{
    /* One 'map' per run of consecutive slots (MADV_SWAPSTUB leaves one per
     * 512-page cluster), all on one connection, pipelined: the cost is
     * per run, and not a round trip each. */
    g_autoptr(GPtrArray) lines = g_ptr_array_new_with_free_func(g_free);
    for (uint64_t i = 0; i < s->pages;) {
        uint64_t j = i + 1;
        while (j < s->pages && s->slot[j] == s->slot[j - 1] + 1)
            j++;
        g_ptr_array_add(lines, g_strdup_printf("map %" G_GUINT64_FORMAT " %s %" G_GUINT64_FORMAT
                                               " %" G_GUINT64_FORMAT, s->slot[i], s->export_name,
                                               s->export_page + i, j - i));
        i = j;
    }
    if (!swapstub_control_lines(s->control, (char *const *)lines->pdata, lines->len, error))
        return false;
    r->map_runs += lines->len;
    return true;
}

/* fn over the whole region's pagemap, PAGEMAP_BATCH entries at a time:
 * a buffer for the whole region (8 MiB per 4 GiB) is fresh memory, whose
 * first touch costs more here than the read itself, on the way to the
 * switch. fn gets the first page's index and returns false (with *error)
 * to stop. */
typedef bool (*PagemapFn)(SwapStub *s, uint64_t first, uint64_t n, const uint64_t *pm,
                          GError **error);

static bool pagemap_batches(SwapStub *s, PagemapFn fn, GError **error)
{
    g_autofree uint64_t *pm = g_new(uint64_t, PAGEMAP_BATCH);
    for (uint64_t first = 0; first < s->pages; first += PAGEMAP_BATCH) {
        uint64_t n = MIN((uint64_t)PAGEMAP_BATCH, s->pages - first);
        if (!target_pagemap(&s->t, page_addr(s, first), n, pm, error) ||
            !fn(s, first, n, pm, error))
            return false;
    }
    return true;
}

static bool slots_unmoved(SwapStub *s, uint64_t first, uint64_t n, const uint64_t *pm,
                          GError **error)
{
    for (uint64_t j = 0; j < n; j++) {
        uint64_t i = first + j;
        if (!(pm[j] & PM_SWAPPED) || pm_swap_type(pm[j]) != s->type ||
            pm_swap_offset(pm[j]) != s->slot[i]) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                        "page %" G_GUINT64_FORMAT " is no longer swapped out to slot %"
                        G_GUINT64_FORMAT " after arming (pagemap 0x%" G_GINT64_MODIFIER
                        "x): the region was touched during arming", i, s->slot[i], pm[j]);
            return false;
        }
    }
    return true;
}

/* Nothing may have moved: every page still swapped out to the slot that
 * was registered for it. */
bool swapstub_verify_slots(SwapStub *s, GError **error)
{
    return pagemap_batches(s, slots_unmoved, error);
}

/* From here on, pages that look like markers are the guest's data. */
static void markers_off(SwapStub *s)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *ok = swapstub_control(s->control, "markers off", &err);
    if (!ok)
        g_warning("swapstub: 'markers off': %s", err->message);
}

/* Undo a failed arm: every page becomes zero, plain memory. Ours are
 * dropped, swap entries and all; another process's are overwritten (no
 * process_madvise advice drops pages), each write fault reading its page
 * back first. */
void swapstub_disarm(SwapStub *s)
{
    g_autoptr(GError) err = NULL;
    if (target_is_self(&s->t)) {
        if (madvise((void *)(uintptr_t)s->addr, s->pages * SS_PAGE, MADV_DONTNEED) < 0)
            g_warning("undoing the failed arm: MADV_DONTNEED of the region failed: %s; its "
                      "pages may still be on %s: do not run the workload on it",
                      g_strerror(errno), s->device);
        return;
    }
    static const unsigned char zero[SS_PAGE * 16];
    for (uint64_t i = 0; i < s->pages; i += 16) {
        uint64_t n = MIN((uint64_t)16, s->pages - i);
        if (!target_write(&s->t, page_addr(s, i), zero, n * SS_PAGE, &err)) {
            g_warning("undoing the failed arm: %s; the region may still show marker pages: "
                      "do not run the workload on it", err->message);
            return;
        }
    }
}

/* Arming goes through the region a chunk at a time, with two chunks in
 * flight: a chunk is out of the swap cache before the chunk after the next
 * one gets its markers, whose first touch then gets the memory it freed.
 * Fresh memory is what costs (on these machines' hypervisor, 2-3 s per GiB
 * the first time, against 0.1 s for memory used before, and memory left
 * free for a few seconds is fresh again), so chunks are small: arming
 * never holds more than two of them in memory. 32 MiB measured best
 * (bench/prepare-time.sh: 128 MiB chunks one at a time 0.9-1.5 s per GiB,
 * 32 MiB two in flight 0.7-0.9; 16 MiB three in flight in between).
 * Chunks end on 2 MiB boundaries, so that huge pages page out whole. */
#define ARM_CHUNK_BYTES (UINT64_C(32) << 20)
#define ARM_CHUNKS_IN_FLIGHT 2
#define HUGE_BYTES (UINT64_C(2) << 20)

static Span next_chunk(const SwapStub *s, uint64_t first)
{
    if (first >= s->pages)
        return (Span){ first, 0 };
    uint64_t end = (page_addr(s, first) + ARM_CHUNK_BYTES) & ~(HUGE_BYTES - 1);
    uint64_t n = (end - page_addr(s, first)) / SS_PAGE;
    return (Span){ first, MIN(n, s->pages - first) };
}

/* Seconds since *t, which moves on to now. */
static double phase_seconds(gint64 *t)
{
    gint64 now = g_get_monotonic_time();
    double d = (double)(now - *t) / 1e6;
    *t = now;
    return d;
}

/* A chunk whose page-out was started. */
typedef struct {
    Span sp;
    int64_t baseline;             /* SwapCached before its markers */
} Pending;

/* Wait until the chunk's markers are all on the device (chunks start at
 * page 0 and go in order, so the daemon then holds markers_base plus
 * every page up to the chunk's end), record its slots, and evict it from
 * the swap cache. */
static bool settle_chunk(SwapStub *s, const SwapStubConfig *cfg, uint64_t cookie,
                         uint64_t markers_base, const Pending *p, SwapStubArmReport *r,
                         GError **error)
{
    gint64 t = g_get_monotonic_time();
    Span sp = p->sp;
    if (!wait_markers_written(s, markers_base + sp.first + sp.n, sp, error) ||
        !collect_slots(s, sp, error))
        return false;
    r->pageout_s += phase_seconds(&t);
    if (!evict(s, cookie, sp, cfg->evict_seconds ? cfg->evict_seconds : 30, p->baseline, false,
               r, error))
        return false;
    r->evict_s += phase_seconds(&t);
    return true;
}

SwapStub *swapstub_arm(const SwapStubConfig *cfg, SwapStubArmReport *report, GError **error)
{
    SwapStubArmReport local = { 0 }, *r = report ? report : &local;
    g_autofree char *expect = NULL, *ok = NULL;   /* 'markers COOKIE' and its answer */
    memset(r, 0, sizeof *r);
    r->method = "stock";
    gint64 t0 = g_get_monotonic_time();
    SwapDevInfo dev;
    if (!swapdev_check_zswap(error) || !swapdev_lookup(cfg->device, &dev, error))
        return NULL;
    SwapStub *s = swapstub_new(cfg, error);
    if (!s)
        return NULL;
    s->type = dev.type;
    r->pages = s->pages;
    if (cfg->swap_type_known) {
        s->type = cfg->swap_type;
        s->type_known = true;
    }

    /* A kernel with mm-patch-madvise and a stub-only device: no I/O. */
    int advice = 0, use_madvise = swapstub_madvise_choose(s, &advice, error);
    if (use_madvise < 0)
        goto fail_early;
    if (use_madvise) {
        if (dev.size_pages - dev.used_pages < s->pages) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_NOSPC,
                        "%s has %" G_GUINT64_FORMAT " free slots, the region %" G_GUINT64_FORMAT
                        " pages: make it larger (setup-swap.sh --size)", cfg->device,
                        dev.size_pages - dev.used_pages, s->pages);
            goto fail_early;
        }
        if (!target_check_private_anon(&s->t, s->addr, s->pages * SS_PAGE, error) ||
            !swapstub_arm_madvise(s, advice, cfg->map_later, r, error))
            goto fail_early;
        r->seconds = (double)(g_get_monotonic_time() - t0) / 1e6;
        r->swap_type = s->type;
        return s;
    }
    /* Every page-out goes to the highest-priority device (equal ones share
     * them): the region reaches this one only if it is above all others. */
    if (!dev.top) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                    "%s has priority %d, and another active swap device has the same or a "
                    "higher one, so the region's pages would not all go to %s: it must have "
                    "the highest (setup-swap.sh gives it that; see /proc/swaps)", cfg->device,
                    dev.priority, cfg->device);
        goto fail_early;
    }
    /* This CPU's page-outs may still go to a swap cluster of another
     * device the kernel cached for it: exhaust that first (priming), and
     * stay on this CPU while arming; the type it then allocates on is the
     * device's, checked against the first chunk. With no other swap device
     * active, every cluster a CPU can have cached is on this one (swapoff
     * drops a device's): there is nothing to exhaust, and the first page
     * swapped out tells the type. Priming took 10-20 ms here, for each of
     * a patched QEMU's RAM blocks. */
    bool alone = dev.total_pages == dev.size_pages;
    if (alone && !cfg->swap_type_known) {
        if (!swapstub_pin_here(&s->pin, error))
            goto fail_early;
        s->type = SS_TYPE_UNSET;
    } else {
        gint64 prime_start = g_get_monotonic_time();
        int primed = swapstub_prime_swap_alloc(&s->pin, error);
        if (primed < 0)
            goto fail_early;
        r->prime_s = (double)(g_get_monotonic_time() - prime_start) / 1e6;
        g_debug("page-outs of this CPU go to swap type %d (found in %.1f ms)", primed,
                r->prime_s * 1e3);
        if (cfg->swap_type_known && (unsigned)primed != cfg->swap_type) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                        "page-outs go to swap type %d, but %s was given as type %u: is it "
                        "the highest-priority device?", primed, cfg->device, cfg->swap_type);
            goto fail_early;
        }
        s->type = (unsigned)primed;
    }
    s->type_known = false;         /* verified with the first chunk's pages */
    if ((dev.total_used_pages + s->pages) * 2 >= dev.total_pages) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_NOSPC,
                    "arming %" G_GUINT64_FORMAT " pages would leave swap at least half full "
                    "(%" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT " pages used), and then the "
                    "kernel frees slots on read: make %s at least twice the region plus what "
                    "is already swapped (setup-swap.sh --size)", s->pages,
                    dev.total_used_pages, dev.total_pages, cfg->device);
        goto fail_early;
    }
    /* The region's THP setting is the caller's and stays so: a QEMU's RAM
     * must get transparent huge pages back once it is plain memory again.
     * A huge page also pages out as one folio, which halves arming time. */
    if (!target_check_private_anon(&s->t, s->addr, s->pages * SS_PAGE, error))
        goto fail_early;

    uint64_t markers_base, reads_before;
    int64_t baseline;
    uint64_t cookie = (uint64_t)g_random_int() << 32 | g_random_int();
    expect = g_strdup_printf("markers %" G_GINT64_MODIFIER "x", cookie);
    if (!(ok = swapstub_control(s->control, expect, error)) ||
        !swapstub_daemon_marker_reads(s, &reads_before, error) ||
        !daemon_marker_pages(s, &markers_base, error))
        goto fail;
    /* Two chunks in flight: this chunk's markers are written and its
     * page-out started while the previous chunk's travels through the
     * device; then the previous one is collected and evicted, which frees
     * its memory for the next chunk's first touch. The device path (loop,
     * FUSE, nbdfuse, nbd-pagesrv) then seldom waits for the arming thread.
     * The first chunk settles alone: it tells the device's swap type and
     * whether another process's swap cache can be seen. Without that,
     * eviction waits for the system's SwapCached to fall back, which a
     * chunk still in flight would prevent: then it stays one at a time. */
    Pending pend[ARM_CHUNKS_IN_FLIGHT] = { 0 };
    unsigned npend = 0;
    for (Span sp = next_chunk(s, 0); sp.n; sp = next_chunk(s, sp.first + sp.n)) {
        gint64 t_phase = g_get_monotonic_time();
        /* Each chunk's own baseline: the earlier chunks are out of the swap
         * cache and this one is not in it yet, so what other processes put
         * there during earlier chunks (a DAMON page-out scheme does, on
         * these machines) does not count against this one. */
        baseline = swapdev_swap_cached_pages();
        if (!write_markers(s, cookie, sp, error))
            goto fail;
        r->markers_s += phase_seconds(&t_phase);
        if (!pageout_again(s, sp, error))
            goto fail;
        r->pageout_s += phase_seconds(&t_phase);
        pend[npend++] = (Pending){ sp, baseline };
        unsigned keep = (sp.first == 0 || s->global_check) ? 0 : ARM_CHUNKS_IN_FLIGHT - 1;
        while (npend > keep) {
            if (!settle_chunk(s, cfg, cookie, markers_base, &pend[0], r, error))
                goto fail;
            memmove(pend, pend + 1, --npend * sizeof pend[0]);
        }
    }
    for (unsigned i = 0; i < npend; i++)
        if (!settle_chunk(s, cfg, cookie, markers_base, &pend[i], r, error))
            goto fail;
    /* Every chunk was out of the swap cache when its eviction ended, and
     * only a read of a marker slot can bring a page back. Evicting by
     * mincore reads nothing from the device, unless a page leaves the
     * cache between mincore and MADV_POPULATE_READ: that read (and its
     * readahead) may bring back an earlier chunk's slots. So reads since
     * the first chunk count: map (none_cached_since_arming) then looks at
     * the whole region again. The global check reads every page back by
     * design: there only reads after arming count. */
    if (s->global_check) {
        if (!swapstub_daemon_marker_reads(s, &s->marker_reads, error))
            goto fail;
    } else {
        s->marker_reads = reads_before;
    }
    r->marker_reads = s->marker_reads;
    r->swap_type = s->type;
    markers_off(s);
    swapstub_unpin(&s->pin);
    if (!cfg->map_later && !swapstub_map(s, r, error))
        goto fail_early;               /* swapstub_map disarmed it */
    r->seconds = (double)(g_get_monotonic_time() - t0) / 1e6;
    return s;

fail:
    markers_off(s);
    swapstub_disarm(s);
fail_early:
    swapstub_free(s);
    return NULL;
}

/* The mapping is live: a page of the region still in the swap cache would
 * now be read as the source's page while it holds a marker. Arming left
 * none there, and only a read of a marker slot can bring one back: if
 * nbd-pagesrv has served none since, nothing to do (no cost however large
 * the region: this runs after `migrate`). Otherwise mincore tells which
 * pages came back, and they are dropped again; without mincore (another
 * process that cannot be traced) the map is refused. */
static bool none_cached_since_arming(SwapStub *s, SwapStubArmReport *r, bool *evicted,
                                     GError **error)
{
    uint64_t reads;
    *evicted = false;
    if (!swapstub_daemon_marker_reads(s, &reads, error))
        return false;
    if (reads == s->marker_reads)
        return true;
    *evicted = true;
    g_message("nbd-pagesrv served %" G_GUINT64_FORMAT " reads of marker slots since the region "
              "was armed: dropping whatever of it came back into the swap cache",
              reads - s->marker_reads);
    g_autoptr(GError) why = NULL;
    if (!s->global_check && evict(s, 0, whole(s), 3, 0, true, r, &why))
        return true;
    g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                "nbd-pagesrv served %" G_GUINT64_FORMAT " reads of marker slots since "
                "the region of process %d was armed, so some of its pages may be back in "
                "the swap cache (something touched the region), and they could not be "
                "dropped (%s); arm it again", reads - s->marker_reads, (int)s->t.pid,
                why ? why->message : "its swap cache cannot be inspected");
    return false;
}

typedef struct {
    SwapStub *s;
    bool ok;
    GError *error;
} VerifyJob;

static gpointer verify_thread(gpointer data)
{
    VerifyJob *j = data;
    j->ok = swapstub_verify_slots(j->s, &j->error);
    return NULL;
}

bool swapstub_map(SwapStub *s, SwapStubArmReport *report, GError **error)
{
    SwapStubArmReport local = { 0 }, *r = report ? report : &local;
    gint64 t = g_get_monotonic_time();
    if (s->mapped) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_INVAL, "the region is mapped already");
        return false;
    }
    /* No pagemap read before registering: nbd-pagesrv refuses to map a
     * slot that holds a written page, so a slot that moved since arming
     * cannot cost anyone their page. The read that checks none moved runs
     * while nbd-pagesrv registers them (each takes ~10 ms per 4 GiB, on the
     * way to the switch). Like a read after registering, it catches a page
     * dropped or touched since arming; neither sees what happens after it
     * (the destination must leave its RAM alone until the switch). If
     * pages had to be dropped from the swap cache here, the slots are read
     * again afterwards. */
    VerifyJob job = { s, false, NULL };
    GThread *th = g_thread_try_new("swapstub-verify", verify_thread, &job, NULL);
    if (!th)
        verify_thread(&job);        /* no thread to be had: one after the other */
    bool registered = swapstub_register_mapping(s, r, error);
    gint64 t_registered = g_get_monotonic_time();
    if (th)
        g_thread_join(th);
    gint64 t_verified = g_get_monotonic_time();
    bool evicted = false;
    if (registered && !job.ok)
        g_propagate_error(error, g_steal_pointer(&job.error));
    g_clear_error(&job.error);
    if (!registered || !job.ok || !none_cached_since_arming(s, r, &evicted, error) ||
        (evicted && !swapstub_verify_slots(s, error))) {
        swapstub_disarm(s);
        return false;
    }
    s->mapped = true;
    gint64 t_done = g_get_monotonic_time();
    r->map_s = (double)(t_done - t) / 1e6;
    g_debug("mapped %" G_GUINT64_FORMAT " pages of export '%s' in %.1f ms: registered in "
            "%.1f ms, pagemap check done %.1f ms later, swap cache check %.1f ms%s",
            s->pages, s->export_name, (double)(t_done - t) / 1e3,
            (double)(t_registered - t) / 1e3, (double)(t_verified - t_registered) / 1e3,
            (double)(t_done - t_verified) / 1e3, evicted ? " (pages evicted again)" : "");
    return true;
}

SwapStub *swapstub_attach_armed(const SwapStubConfig *cfg, uint64_t marker_reads,
                                GError **error)
{
    SwapStub *s = swapstub_attach(cfg, error);
    if (!s)
        return NULL;
    for (uint64_t i = 0; i < s->pages; i++) {
        if (s->converted[i]) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                        "page %" G_GUINT64_FORMAT " of the region is not swapped out to %s: "
                        "it was not armed, or was touched since; arm it again", i,
                        cfg->device);
            swapstub_free(s);
            return NULL;
        }
    }
    s->marker_reads = marker_reads;
    return s;
}

/* Each page's slot on the device; a page not on it is plain memory. */
static bool record_slots(SwapStub *s, uint64_t first, uint64_t n, const uint64_t *pm,
                         GError **error)
{
    (void)error;
    for (uint64_t j = 0; j < n; j++) {
        bool on_dev = (pm[j] & PM_SWAPPED) && pm_swap_type(pm[j]) == s->type;
        s->slot[first + j] = on_dev ? pm_swap_offset(pm[j]) : 0;
        s->converted[first + j] = !on_dev;
    }
    return true;
}

SwapStub *swapstub_attach(const SwapStubConfig *cfg, GError **error)
{
    SwapDevInfo dev;
    if (!swapdev_lookup(cfg->device, &dev, error))
        return NULL;
    SwapStub *s = swapstub_new(cfg, error);
    if (!s)
        return NULL;
    s->type = cfg->swap_type_known ? cfg->swap_type : dev.type;
    s->type_known = true;
    if (!pagemap_batches(s, record_slots, error)) {
        swapstub_free(s);
        return NULL;
    }
    return s;
}

/* A kernel with mm-patch-madvise announces it in sysfs. Probing with
 * madvise() itself would be unsafe: on a kernel without the patch, the
 * advice number may one day mean something else. */

bool swapstub_kernel_has_madv_swapstub(void)
{
    return access(SWAPSTUB_SYSFS, F_OK) == 0;
}
