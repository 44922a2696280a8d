/* local-swapin: the physical floor for a swap-in fault on this machine,
 * for comparing swapcopy's demand faults against.
 *
 *   local-swapin --mib N [--faults K]
 *
 * Pages N MiB of this process out to whatever swap device has the highest
 * priority (bench/swapstub.sh makes that a loop device on a tmpfs file:
 * no network, no daemon), empties the swap cache, then times K first
 * touches of random pages 16 apart (so no readahead serves one from
 * another). Prints one JSON line. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <glib.h>

#include "swapstub.h"

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint64_t resident(unsigned char *mem, uint64_t pages, unsigned char *vec)
{
    if (mincore(mem, pages * 4096, vec) < 0) {
        fprintf(stderr, "local-swapin: mincore: %s\n", strerror(errno));
        exit(1);
    }
    uint64_t n = 0;
    for (uint64_t i = 0; i < pages; i++)
        n += vec[i] & 1;
    return n;
}

int main(int argc, char **argv)
{
    gint mib = 256, faults = 2000;
    GOptionEntry entries[] = {
        { "mib", 0, 0, G_OPTION_ARG_INT, &mib, "region size", "MIB" },
        { "faults", 0, 0, G_OPTION_ARG_INT, &faults, "faults to time", "K" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_autoptr(GError) error = NULL;
    g_autoptr(GOptionContext) ctx = g_option_context_new("- local swap-in latency floor");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &error) || mib <= 0 || faults <= 0) {
        fprintf(stderr, "local-swapin: %s\n", error ? error->message : "bad arguments");
        return 2;
    }
    uint64_t pages = (uint64_t)mib * 256;
    unsigned char *mem = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *vec = g_malloc(pages);
    if (mem == MAP_FAILED) {
        fprintf(stderr, "local-swapin: mmap: %s\n", strerror(errno));
        return 2;
    }
    madvise(mem, pages * 4096, MADV_NOHUGEPAGE);
    for (uint64_t i = 0; i < pages; i++)
        memset(mem + i * 4096, (int)(i % 251) + 1, 4096);   /* never all-zero */
    if (madvise(mem, pages * 4096, MADV_PAGEOUT) < 0) {
        fprintf(stderr, "local-swapin: MADV_PAGEOUT: %s (is swap on?)\n", strerror(errno));
        return 1;
    }
    int rounds = 0;
    for (; rounds < 200 && resident(mem, pages, vec) > 0; rounds++) {
        g_autoptr(GError) err = NULL;
        if (!swapstub_drain_lru_batches(&err)) {
            fprintf(stderr, "local-swapin: %s\n", err->message);
            return 1;
        }
        for (uint64_t i = 0; i < pages; i++)
            if (vec[i] & 1) {
                madvise(mem + i * 4096, 4096, MADV_POPULATE_READ);
                madvise(mem + i * 4096, 4096, MADV_PAGEOUT);
            }
        g_usleep(10000);
    }
    uint64_t left = resident(mem, pages, vec);
    double *lat = g_new(double, (gsize)faults);
    GRand *rng = g_rand_new_with_seed(42);
    volatile unsigned char sink = 0;
    for (int i = 0; i < faults; i++) {
        uint64_t p = (uint64_t)g_rand_int_range(rng, 0, (gint32)(pages / 16)) * 16;
        double a = now_us();
        sink ^= mem[p * 4096];
        lat[i] = now_us() - a;
        if (mem[p * 4096] != (unsigned char)((p % 251) + 1)) {
            fprintf(stderr, "local-swapin: page %" G_GUINT64_FORMAT " came back wrong\n", p);
            return 1;
        }
    }
    (void)sink;
    qsort(lat, (size_t)faults, sizeof(double), cmp_double);
    printf("{\"mib\":%d,\"faults\":%d,\"still_resident\":%" G_GUINT64_FORMAT ",\"evict_rounds\":%d,"
           "\"fault_us_p50\":%.1f,\"fault_us_p99\":%.1f,\"fault_us_max\":%.1f}\n",
           mib, faults, left, rounds, lat[faults / 2], lat[faults * 99 / 100], lat[faults - 1]);
    g_rand_free(rng);
    g_free(lat);
    g_free(vec);
    munmap(mem, pages * 4096);
    return left ? 1 : 0;
}
