/* swap-roundtrip: prove that the kernel swaps to DEVICE and reads every page
 * back intact.
 *
 *   swap-roundtrip --device DEV --mib N [--seed N] [--max-rounds N]
 *                  [--progress] [--json]
 *
 * Maps N MiB of private anonymous memory, fills every page with a pattern
 * of its own (page index and seed), pages it out, checks in
 * /proc/self/pagemap that every page sits on DEV, empties the swap cache
 * (MADV_POPULATE_READ + MADV_PAGEOUT rounds until mincore() reports
 * nothing resident), then touches every page, which the kernel must now
 * read from DEV, and verifies every byte. Exits 1 on any failure.
 * Needs root: pagemap shows swap types and offsets only to CAP_SYS_ADMIN.
 * DEV must be the only swap device at the highest priority. */
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "swapstub.h"

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

#define PAGE 4096u
#define WORDS (PAGE / sizeof(uint64_t))
#define CHUNK_PAGES 4096u      /* 16 MiB: unit of pageout and progress */
#define PM_PRESENT (1ull << 63)
#define PM_SWAPPED (1ull << 62)
#define PM_SWAP_TYPE(e) ((unsigned)((e) & 0x1f))
#define PM_SWAP_OFFSET(e) (((e) >> 5) & ((1ull << 50) - 1))

static const char *prog = "swap-roundtrip";

typedef struct {
    unsigned type;             /* expected swap type of DEV, see find_device() */
    uint64_t size_kib, used_kib;
    int priority;
    uint64_t total_kib, total_used_kib;   /* all active devices */
    int other_max_priority;               /* INT_MIN if DEV is alone */
} SwapDev;

typedef struct {
    uint64_t pages, swapped_first, on_device, evicted_rounds, verified, wrong;
    uint64_t used_before_kib, used_out_kib;
    double pageout_s, evict_s, swapin_s;
} Report;

static double now_s(void)
{
    return (double)g_get_monotonic_time() / G_USEC_PER_SEC;
}

/* The pattern of one 64-bit word. Word 0 carries the page index in the
 * clear (xored with a seed-derived key) so that a page found at the wrong
 * place says where it came from; the others are a hash of page and word,
 * so no page is all zeros (the kernel would never write it to the device). */
static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t page_key(uint64_t seed)
{
    return mix64(seed ^ 0x5357415052545249ull) | 1;   /* never 0 */
}

static uint64_t pattern_word(uint64_t seed, uint64_t page, unsigned w)
{
    if (w == 0)
        return page_key(seed) ^ page;
    return mix64(mix64(seed + page) + w);
}

static void fill_page(uint64_t *p, uint64_t seed, uint64_t page)
{
    for (unsigned w = 0; w < WORDS; w++)
        p[w] = pattern_word(seed, page, w);
}

static bool page_matches(const uint64_t *p, uint64_t seed, uint64_t page)
{
    for (unsigned w = 0; w < WORDS; w++)
        if (p[w] != pattern_word(seed, page, w))
            return false;
    return true;
}

/* Why a page is wrong, for the failure message. */
static void describe_wrong_page(const uint64_t *p, uint64_t seed, uint64_t page, uint64_t pages)
{
    unsigned first_bad = 0;
    while (first_bad < WORDS && p[first_bad] == pattern_word(seed, page, first_bad))
        first_bad++;
    bool zero = true;
    for (unsigned w = 0; w < WORDS && zero; w++)
        zero = p[w] == 0;
    uint64_t origin = p[0] ^ page_key(seed);
    if (zero)
        fprintf(stderr, "%s: page %" PRIu64 " reads as zeros: the device returned a page "
                "that was never written (lost write, or a read from the wrong slot)\n",
                prog, page);
    else if (origin < pages && origin != page && page_matches(p, seed, origin))
        fprintf(stderr, "%s: page %" PRIu64 " holds the data of page %" PRIu64 ": the "
                "device returned another slot's content\n", prog, page, origin);
    else
        fprintf(stderr, "%s: page %" PRIu64 " differs from its pattern from byte %u on "
                "(word %u: 0x%016" PRIx64 ", want 0x%016" PRIx64 ")\n", prog, page,
                first_bad * 8, first_bad, p[first_bad], pattern_word(seed, page, first_bad));
}

/* The swap type pagemap reports is the index of the device in the kernel's
 * swap_info[] array. /proc/swaps walks that array in index order and skips
 * unused entries, and swapon takes the lowest unused index, so the n-th
 * line of /proc/swaps is type n, unless a device listed before DEV was
 * swapped off after DEV was added (DEV keeps its index; the line moves
 * up). That exception is caught, not assumed away: every page must also
 * show the same type, and DEV's "Used" must grow by the whole region.
 * Checked on kernel 6.18: a device added alone is type 0, and after
 * swapon A, swapon B, B's pages show type 1. Devices are matched by
 * device number (block devices) or inode (swap files), not by name. */
static bool find_device(const char *device, SwapDev *out)
{
    struct stat want;
    if (stat(device, &want) < 0) {
        fprintf(stderr, "%s: cannot stat %s: %s\n", prog, device, strerror(errno));
        return false;
    }
    FILE *f = fopen("/proc/swaps", "re");
    if (!f) {
        fprintf(stderr, "%s: cannot read /proc/swaps: %s\n", prog, strerror(errno));
        return false;
    }
    char line[4096];
    bool found = false;
    unsigned idx = 0;
    memset(out, 0, sizeof *out);
    out->other_max_priority = INT_MIN;
    if (!fgets(line, sizeof line, f))
        line[0] = 0;   /* the header line */
    while (fgets(line, sizeof line, f)) {
        char name[4096], kind[32];
        unsigned long long size_kib, used_kib;
        int prio;
        /* Names with spaces appear octal-escaped (\040), so %s is safe. */
        if (sscanf(line, "%4095s %31s %llu %llu %d", name, kind, &size_kib, &used_kib,
                   &prio) != 5) {
            fprintf(stderr, "%s: cannot parse /proc/swaps line: %s", prog, line);
            fclose(f);
            return false;
        }
        out->total_kib += size_kib;
        out->total_used_kib += used_kib;
        struct stat st;
        bool same = stat(name, &st) == 0 &&
                    (S_ISBLK(want.st_mode) ? S_ISBLK(st.st_mode) && st.st_rdev == want.st_rdev
                                           : st.st_dev == want.st_dev && st.st_ino == want.st_ino);
        if (same && !found) {
            found = true;
            out->type = idx;
            out->size_kib = size_kib;
            out->used_kib = used_kib;
            out->priority = prio;
        } else if (prio > out->other_max_priority) {
            out->other_max_priority = prio;
        }
        idx++;
    }
    fclose(f);
    if (!found) {
        fprintf(stderr, "%s: %s is not an active swap device (not in /proc/swaps): run "
                "mkswap and swapon -p 32767 on it first\n", prog, device);
        return false;
    }
    return true;
}

static bool read_used_kib(const char *device, uint64_t *used_kib)
{
    SwapDev d;
    if (!find_device(device, &d))
        return false;
    *used_kib = d.used_kib;
    return true;
}

static bool check_preconditions(const char *device, const SwapDev *d, uint64_t bytes)
{
    if (geteuid() != 0) {
        fprintf(stderr, "%s: must run as root: /proc/self/pagemap shows swap types and "
                "offsets only to CAP_SYS_ADMIN\n", prog);
        return false;
    }
    g_autofree char *zswap = NULL;
    if (g_file_get_contents("/sys/module/zswap/parameters/enabled", &zswap, NULL, NULL) &&
        (zswap[0] == 'Y' || zswap[0] == 'y' || zswap[0] == '1')) {
        fprintf(stderr, "%s: zswap is enabled: swapped-out pages would stay compressed in "
                "RAM instead of reaching %s; disable it: echo N > "
                "/sys/module/zswap/parameters/enabled\n", prog, device);
        return false;
    }
    if (d->other_max_priority >= d->priority) {
        fprintf(stderr, "%s: another swap device has priority %d, %s only %d: pages could "
                "go there; give %s the highest priority alone (swapon -p 32767)\n", prog,
                d->other_max_priority, device, d->priority, device);
        return false;
    }
    /* Above half full (vm_swap_full()) a swap-in frees its slot and dirties
     * the page, so the eviction rounds would write it out again forever. */
    uint64_t kib = bytes / 1024;
    if (2 * (d->total_used_kib + kib) >= d->total_kib || kib > d->size_kib - d->used_kib) {
        fprintf(stderr, "%s: %" PRIu64 " MiB would fill swap to more than half (%" PRIu64
                " of %" PRIu64 " MiB used; %s has %" PRIu64 " MiB): use a device more than "
                "twice the region\n", prog, kib / 1024, d->total_used_kib / 1024,
                d->total_kib / 1024, device, d->size_kib / 1024);
        return false;
    }
    return true;
}

static bool madvise_or_say(void *addr, size_t len, int advice, const char *name)
{
    if (madvise(addr, len, advice) == 0)
        return true;
    fprintf(stderr, "%s: madvise(%s) on %zu bytes at %p failed: %s%s\n", prog, name, len,
            addr, strerror(errno),
            errno == EINVAL ? " (needs Linux 5.14 or later for MADV_POPULATE_READ, "
                              "5.4 for MADV_PAGEOUT)" : "");
    return false;
}

/* MADV_PAGEOUT cannot take pages parked in another CPU's LRU batch: empty
 * every CPU's first, as swapstub does before each page-out pass
 * (swapstub/lru-drain.c). */
static bool drain_or_say(void)
{
    g_autoptr(GError) err = NULL;
    if (swapstub_drain_lru_batches(&err))
        return true;
    fprintf(stderr, "%s: %s\n", prog, err->message);
    return false;
}

/* Progress on stderr: one rewritten line on a terminal, a few lines
 * otherwise. */
static void progress(bool on, const char *what, uint64_t done, uint64_t total, double t0)
{
    if (!on)
        return;
    static unsigned last_quarter;
    bool tty = isatty(STDERR_FILENO);
    double mib = (double)done * PAGE / (1 << 20), dt = now_s() - t0;
    unsigned quarter = (unsigned)(done * 4 / total);
    if (!tty && done != total && quarter == last_quarter)
        return;
    last_quarter = done == total ? 0 : quarter;
    fprintf(stderr, "%s  %-28s %6.0f / %.0f MiB  %7.1f MiB/s%s", tty ? "\r" : "", what, mib,
            (double)total * PAGE / (1 << 20), dt > 0 ? mib / dt : 0.0,
            tty && done != total ? "" : "\n");
}

static bool read_pagemap(int fd, const void *addr, uint64_t pages, uint64_t *pm)
{
    off_t off = (off_t)((uintptr_t)addr / PAGE * sizeof(uint64_t));
    size_t want = pages * sizeof(uint64_t), got = 0;
    while (got < want) {
        ssize_t n = pread(fd, (char *)pm + got, want - got, off + (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "%s: reading /proc/self/pagemap failed: %s\n", prog,
                    n < 0 ? strerror(errno) : "unexpected end of file");
            return false;
        }
        got += (size_t)n;
    }
    return true;
}

/* Faults back in only the pages mincore() still sees (the swap cache: no
 * device reads) and pages them out again, which drops them without I/O.
 * A page still under writeback cannot be dropped yet: wait and repeat. */
static bool evict(unsigned char *mem, uint64_t pages, unsigned max_rounds, Report *r)
{
    g_autofree unsigned char *vec = g_malloc(pages);
    for (unsigned round = 0;; round++) {
        if (mincore(mem, pages * PAGE, vec) < 0) {
            fprintf(stderr, "%s: mincore of the region failed: %s\n", prog, strerror(errno));
            return false;
        }
        uint64_t resident = 0;
        for (uint64_t i = 0; i < pages; i++)
            resident += vec[i] & 1;
        if (!resident) {
            r->evicted_rounds = round;
            return true;
        }
        if (round == max_rounds) {
            /* On hosts with a DAMON page-out scheme a handful of pages
             * sometimes stay cached however long we try. Their bytes are
             * still checked below; they just are not read from the device.
             * More than 1% means something is really wrong. */
            bool tolerated = resident * 100 <= pages;
            fprintf(stderr, "%s: %" PRIu64 " of %" PRIu64 " pages still resident after %u "
                    "rounds of MADV_POPULATE_READ + MADV_PAGEOUT%s\n", prog, resident,
                    pages, max_rounds,
                    tolerated ? " (tolerated, at most 1%: checked, but served from the "
                                "swap cache)"
                              : ": writeback to the device is stuck or very slow, or swap "
                                "is over half full");
            r->evicted_rounds = round;
            return tolerated;
        }
        if (round > 0)
            g_usleep(MIN(10000u << MIN(round, 5u), 200000u));
        if (!drain_or_say())
            return false;
        for (uint64_t i = 0; i < pages;) {
            if (!(vec[i] & 1)) {
                i++;
                continue;
            }
            uint64_t j = i;
            while (j < pages && (vec[j] & 1))
                j++;
            if (!madvise_or_say(mem + i * PAGE, (j - i) * PAGE, MADV_POPULATE_READ,
                                "MADV_POPULATE_READ") ||
                !madvise_or_say(mem + i * PAGE, (j - i) * PAGE, MADV_PAGEOUT, "MADV_PAGEOUT"))
                return false;
            i = j;
        }
    }
}

/* Every page must be swapped out (not present) to DEV, each in a slot of
 * its own inside the device. */
static bool check_on_device(const char *device, const SwapDev *d, const uint64_t *pm,
                            uint64_t pages, Report *r)
{
    uint64_t dev_pages = d->size_kib / 4, bad = 0, other_type = 0;
    unsigned seen_type = d->type;
    g_autofree uint8_t *seen = g_malloc0(dev_pages / 8 + 1);
    for (uint64_t i = 0; i < pages; i++) {
        const char *why = NULL;
        uint64_t e = pm[i], off = PM_SWAP_OFFSET(e);
        if (e & PM_PRESENT)
            why = "is still present in memory";
        else if (!(e & PM_SWAPPED))
            why = "is neither present nor swapped";
        else if (PM_SWAP_TYPE(e) != d->type) {
            why = "went to another swap type";
            other_type++;
            seen_type = PM_SWAP_TYPE(e);
        }
        else if (off == 0 || off >= dev_pages)
            why = "has a swap offset outside the device";
        else if (seen[off / 8] & (1u << (off % 8)))
            why = "shares its slot with another page";
        if (why) {
            if (bad++ < 5)
                fprintf(stderr, "%s: page %" PRIu64 " %s (pagemap 0x%016" PRIx64 ": type %u, "
                        "offset %" PRIu64 "; %s is type %u per /proc/swaps, %" PRIu64
                        " pages)\n", prog, i, why, e, PM_SWAP_TYPE(e), off, device, d->type,
                        dev_pages);
            continue;
        }
        seen[off / 8] |= (uint8_t)(1u << (off % 8));
        r->on_device++;
    }
    if (bad)
        fprintf(stderr, "%s: %" PRIu64 " of %" PRIu64 " pages are not swapped out to %s\n",
                prog, bad, pages, device);
    if (other_type == pages && seen_type > d->type)
        fprintf(stderr, "%s: every page went to swap type %u: if that is %s (see its Used in "
                "/proc/swaps), a device listed before it was swapped off after it was added, "
                "which leaves its type number behind its place in /proc/swaps; swapoff and "
                "swapon %s to renumber it\n", prog, seen_type, device, device);
    return bad == 0;
}

static void print_report(const Report *r, bool json, const char *device, unsigned type)
{
    double mib = (double)r->pages * PAGE / (1 << 20);
    double out_s = r->pageout_s + r->evict_s;
    if (json) {
        printf("{\"device\":\"%s\",\"swap_type\":%u,\"pages\":%" PRIu64
               ",\"swapped_first_pageout\":%" PRIu64 ",\"on_device\":%" PRIu64
               ",\"eviction_rounds\":%" PRIu64 ",\"verified\":%" PRIu64 ",\"wrong\":%" PRIu64
               ",\"device_used_kib_before\":%" PRIu64 ",\"device_used_kib_out\":%" PRIu64
               ",\"pageout_s\":%.3f,\"evict_s\":%.3f,\"swapout_mib_s\":%.1f"
               ",\"swapin_s\":%.3f,\"swapin_mib_s\":%.1f,\"result\":\"%s\"}\n",
               device, type, r->pages, r->swapped_first, r->on_device, r->evicted_rounds,
               r->verified, r->wrong, r->used_before_kib, r->used_out_kib, r->pageout_s,
               r->evict_s, out_s > 0 ? mib / out_s : 0, r->swapin_s,
               r->swapin_s > 0 ? mib / r->swapin_s : 0, r->wrong ? "FAIL" : "PASS");
        return;
    }
    printf("device %s (swap type %u): %" PRIu64 " pages (%.0f MiB)\n", device, type, r->pages,
           mib);
    printf("swapped out: %" PRIu64 " after the first MADV_PAGEOUT, %" PRIu64 " on the device "
           "after %" PRIu64 " eviction round(s)\n", r->swapped_first, r->on_device,
           r->evicted_rounds);
    printf("device Used: %" PRIu64 " KiB before, %" PRIu64 " KiB with the region out\n",
           r->used_before_kib, r->used_out_kib);
    printf("swap-out: %.1f MiB/s (%.3f s MADV_PAGEOUT + %.3f s until no page resident)\n",
           out_s > 0 ? mib / out_s : 0, r->pageout_s, r->evict_s);
    printf("swap-in:  %.1f MiB/s (%.3f s, %.1f us/page, first touch of every page)\n",
           r->swapin_s > 0 ? mib / r->swapin_s : 0, r->swapin_s,
           r->pages ? r->swapin_s * 1e6 / (double)r->pages : 0);
    printf("verified: %" PRIu64 " pages correct, %" PRIu64 " wrong\n", r->verified, r->wrong);
}

int main(int argc, char **argv)
{
    g_autofree char *device = NULL;
    gint mib = 0, max_rounds = 60;
    gint64 seed = 1;
    gboolean json = FALSE, show_progress = FALSE;
    GOptionEntry entries[] = {
        { "device", 0, 0, G_OPTION_ARG_FILENAME, &device, "active swap device to test", "DEV" },
        { "mib", 0, 0, G_OPTION_ARG_INT, &mib, "size of the region", "N" },
        { "seed", 0, 0, G_OPTION_ARG_INT64, &seed, "pattern seed (default 1)", "N" },
        { "max-rounds", 0, 0, G_OPTION_ARG_INT, &max_rounds,
          "eviction rounds before giving up (default 60)", "N" },
        { "progress", 0, 0, G_OPTION_ARG_NONE, &show_progress, "progress on stderr", NULL },
        { "json", 0, 0, G_OPTION_ARG_NONE, &json, "one JSON object on stdout", NULL },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_autoptr(GError) error = NULL;
    g_autoptr(GOptionContext) ctx = g_option_context_new("- swap a region out to DEV and back");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
        fprintf(stderr, "%s: %s (see --help)\n", prog, error->message);
        return 2;
    }
    if (!device || mib <= 0 || max_rounds < 1 || argc > 1) {
        fprintf(stderr, "%s: usage: %s --device DEV --mib N [--json] [--progress] (see "
                "--help)\n", prog, prog);
        return 2;
    }

    SwapDev dev;
    size_t bytes = (size_t)mib << 20;
    uint64_t pages = bytes / PAGE;
    if (!find_device(device, &dev) || !check_preconditions(device, &dev, bytes))
        return 1;

    unsigned char *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                              -1, 0);
    if (mem == MAP_FAILED) {
        fprintf(stderr, "%s: mmap of %d MiB failed: %s\n", prog, mib, strerror(errno));
        return 1;
    }
    /* A huge page would be split or swapped whole; keep to 4 KiB pages so
     * that pagemap and mincore speak of exactly the pages we wrote. */
    if (!madvise_or_say(mem, bytes, MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE"))
        return 1;
    double t0 = now_s();
    for (uint64_t i = 0; i < pages; i++) {
        fill_page((uint64_t *)(mem + i * PAGE), (uint64_t)seed, i);
        if ((i + 1) % CHUNK_PAGES == 0 || i + 1 == pages)
            progress(show_progress, "writing the pattern", i + 1, pages, t0);
    }

    Report r = { .pages = pages };
    r.used_before_kib = dev.used_kib;
    t0 = now_s();
    if (!drain_or_say())
        return 1;
    for (uint64_t i = 0; i < pages; i += CHUNK_PAGES) {
        uint64_t n = MIN((uint64_t)CHUNK_PAGES, pages - i);
        if (!madvise_or_say(mem + i * PAGE, n * PAGE, MADV_PAGEOUT, "MADV_PAGEOUT"))
            return 1;
        progress(show_progress, "swap-out (MADV_PAGEOUT)", i + n, pages, t0);
    }
    r.pageout_s = now_s() - t0;

    int pm_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pm_fd < 0) {
        fprintf(stderr, "%s: cannot open /proc/self/pagemap: %s (needs "
                "CONFIG_PROC_PAGE_MONITOR)\n", prog, strerror(errno));
        return 1;
    }
    g_autofree uint64_t *pm = g_new(uint64_t, pages);
    if (!read_pagemap(pm_fd, mem, pages, pm))
        return 1;
    for (uint64_t i = 0; i < pages; i++)
        r.swapped_first += (pm[i] & PM_SWAPPED) != 0;

    double t1 = now_s();
    if (show_progress)
        fprintf(stderr, "  emptying the swap cache (MADV_POPULATE_READ + MADV_PAGEOUT)...\n");
    if (!evict(mem, pages, (unsigned)max_rounds, &r))
        return 1;
    r.evict_s = now_s() - t1;
    if (!read_pagemap(pm_fd, mem, pages, pm) || !check_on_device(device, &dev, pm, pages, &r))
        return 1;
    close(pm_fd);
    if (!read_used_kib(device, &r.used_out_kib))
        return 1;
    /* Independent of the type numbering: the device's own count of used
     * slots must have grown by at least the region. */
    if (r.used_out_kib < r.used_before_kib + pages * (PAGE / 1024)) {
        fprintf(stderr, "%s: %s's Used in /proc/swaps grew from %" PRIu64 " to %" PRIu64
                " KiB, less than the %" PRIu64 " KiB swapped out: the pages are somewhere "
                "else\n", prog, device, r.used_before_kib, r.used_out_kib,
                pages * (PAGE / 1024));
        return 1;
    }

    /* Swap-in: the first touch of each page faults it in from the device
     * (with the kernel's readahead of neighbouring slots). */
    volatile uint64_t sink = 0;
    t0 = now_s();
    for (uint64_t i = 0; i < pages; i++) {
        sink += *(volatile uint64_t *)(mem + i * PAGE);
        if ((i + 1) % CHUNK_PAGES == 0 || i + 1 == pages)
            progress(show_progress, "swap-in (first touch)", i + 1, pages, t0);
    }
    r.swapin_s = now_s() - t0;
    (void)sink;

    for (uint64_t i = 0; i < pages; i++) {
        const uint64_t *p = (const uint64_t *)(mem + i * PAGE);
        if (page_matches(p, (uint64_t)seed, i)) {
            r.verified++;
        } else if (r.wrong++ < 10) {
            describe_wrong_page(p, (uint64_t)seed, i, pages);
        }
    }
    print_report(&r, json, device, dev.type);
    if (munmap(mem, bytes) < 0) {
        fprintf(stderr, "%s: munmap failed: %s\n", prog, strerror(errno));
        return 1;
    }
    if (r.wrong) {
        fprintf(stderr, "%s: FAIL: %" PRIu64 " of %" PRIu64 " pages came back wrong\n", prog,
                r.wrong, pages);
        return 1;
    }
    if (!json)
        printf("RESULT: PASS\n");
    return 0;
}
