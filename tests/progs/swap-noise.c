/* swap-noise: another process swapping in while swapcopy arms a region, as
 * another migration landing (or a host's own paging) does.
 *
 *   swap-noise --mib N [--seconds S]
 *
 * Maps N MiB, writes a value into every page, pages the region out
 * (MADV_PAGEOUT, to whatever swap device has the top priority) and out of
 * the swap cache, prints "NOISE started", and then reads it back a little
 * at a time, evenly over S seconds (default 20): read faults from the
 * device, whose pages stay in the swap cache too. The system's SwapCached
 * thus grows all the time. Checks every page it reads back; prints "NOISE
 * read=R wrong=W" at the end or on SIGTERM, and exits 1 if any page came
 * back wrong. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include <glib.h>

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    gint mib = 32, seconds = 20;
    GOptionEntry entries[] = {
        { "mib", 0, 0, G_OPTION_ARG_INT, &mib, "region size", "MIB" },
        { "seconds", 0, 0, G_OPTION_ARG_INT, &seconds, "read it back over S seconds", "S" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_autoptr(GError) error = NULL;
    g_autoptr(GOptionContext) ctx = g_option_context_new("- swap a region in, slowly");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &error) || mib <= 0 || seconds <= 0) {
        fprintf(stderr, "swap-noise: %s\n", error ? error->message : "--mib and --seconds must be > 0");
        return 2;
    }
    size_t pages = (size_t)mib << 8;
    uint64_t *m = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
    if (m == MAP_FAILED) {
        fprintf(stderr, "swap-noise: mmap of %d MiB failed: %s\n", mib, strerror(errno));
        return 2;
    }
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    for (size_t i = 0; i < pages; i++)
        m[i * 512] = UINT64_C(0x5a5a) << 48 | i;
    /* Out, and out of the swap cache: the written pages stay cached until
     * faulted in from there and paged out again (kernel-facts.md). */
    for (int pass = 0; pass < 4; pass++) {
        if ((pass && madvise(m, pages * 4096, MADV_POPULATE_READ) < 0) ||
            madvise(m, pages * 4096, MADV_PAGEOUT) < 0) {
            fprintf(stderr, "swap-noise: MADV_POPULATE_READ/PAGEOUT failed: %s\n",
                    strerror(errno));
            return 2;
        }
        g_usleep(200000);
    }
    printf("NOISE started\n");
    fflush(stdout);
    enum { STEP = 16 };
    gint64 start = g_get_monotonic_time(), span = (gint64)seconds * G_USEC_PER_SEC;
    uint64_t read = 0, wrong = 0;
    for (size_t i = 0; i < pages && !stop; i += STEP) {
        for (size_t j = i; j < i + STEP && j < pages; j++, read++)
            if (m[j * 512] != (UINT64_C(0x5a5a) << 48 | j) && wrong++ < 5)
                fprintf(stderr, "swap-noise: page %zu came back wrong\n", j);
        gint64 due = start + span * (gint64)(i + STEP) / (gint64)pages;
        while (!stop && g_get_monotonic_time() < due)
            g_usleep(1000);
    }
    printf("NOISE read=%" G_GUINT64_FORMAT " wrong=%" G_GUINT64_FORMAT "\n", read, wrong);
    return wrong ? 1 : 0;
}
