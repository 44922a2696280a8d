/* arm-time: how long arming a region of this process takes, for
 * bench/arm-madvise.sh (MADV_SWAPSTUB against the stock-kernel recipe).
 *
 *   arm-time --control CTL --device DEV --export NAME --mib N [--evict-seconds S]
 *
 * Maps N MiB of private anonymous memory, arms it with swapstub_arm()
 * (whichever method libswapstub chooses; SWAPSTUB_ARM_METHOD forces one),
 * reads a few pages back through the device as a sanity check that the
 * region really is armed, and prints one JSON line. The region is not
 * finished: exiting frees its slots. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "swapstub.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    char *control = NULL, *device = NULL, *export_name = NULL;
    gint mib = 1024, evict_seconds = 300;
    gboolean thp = FALSE;
    GOptionEntry entries[] = {
        { "control", 0, 0, G_OPTION_ARG_FILENAME, &control, "control socket", "P" },
        { "device", 0, 0, G_OPTION_ARG_FILENAME, &device, "swap device", "DEV" },
        { "export", 0, 0, G_OPTION_ARG_STRING, &export_name, "source export", "NAME" },
        { "mib", 0, 0, G_OPTION_ARG_INT, &mib, "region size", "MIB" },
        { "evict-seconds", 0, 0, G_OPTION_ARG_INT, &evict_seconds,
          "stock method: time allowed to empty the swap cache (default 300)", "S" },
        { "thp", 0, 0, G_OPTION_ARG_NONE, &thp,
          "MADV_HUGEPAGE on the region first, as QEMU does for guest RAM", NULL },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_autoptr(GError) error = NULL;
    g_autoptr(GOptionContext) ctx = g_option_context_new("- time arming");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &error) || !control || !device ||
        !export_name || mib <= 0 || evict_seconds <= 0) {
        fprintf(stderr, "arm-time: %s\n", error ? error->message
                : "needs --control, --device, --export, --mib > 0");
        return 2;
    }
    uint64_t pages = (uint64_t)mib * 256, len = pages * 4096;
    unsigned char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        fprintf(stderr, "arm-time: mmap of %d MiB failed: %s\n", mib, strerror(errno));
        return 2;
    }
    if (thp && madvise(mem, len, MADV_HUGEPAGE) < 0) {
        fprintf(stderr, "arm-time: MADV_HUGEPAGE of %d MiB failed: %s\n", mib, strerror(errno));
        return 2;
    }
    SwapStubConfig cfg = { .addr = (uint64_t)(uintptr_t)mem, .len = len, .control = control,
                           .device = device, .export_name = export_name,
                           .evict_seconds = (unsigned)evict_seconds };
    SwapStubArmReport r;
    double t0 = now_s();
    SwapStub *s = swapstub_arm(&cfg, &r, &error);
    double t_arm = now_s() - t0;
    if (!s) {
        fprintf(stderr, "arm-time: arming %d MiB failed: %s\n", mib, error->message);
        return 1;
    }
    int64_t on = swapstub_pages_on_device(s, &error);
    if (on != (int64_t)pages) {
        fprintf(stderr, "arm-time: %" G_GINT64_FORMAT " of %" G_GUINT64_FORMAT " pages are on "
                "the device after arming%s%s\n", on, pages, on < 0 ? ": " : "",
                on < 0 ? error->message : "");
        return 1;
    }
    /* Touch a few pages: each is a swap-in through the device. */
    volatile unsigned char sink = 0;
    for (uint64_t p = 0; p < pages; p += pages / 8)
        sink ^= mem[p * 4096];
    (void)sink;
    double gib = (double)len / (1024.0 * 1024 * 1024);
    printf("{\"mib\":%d,\"method\":\"%s\",\"arm_s\":%.3f,\"arm_gib_s\":%.2f,\"rounds\":%u,"
           "\"map_runs\":%" G_GUINT64_FORMAT ",\"prime_s\":%.3f,\"markers_s\":%.3f,"
           "\"pageout_s\":%.3f,\"evict_s\":%.3f,\"map_s\":%.3f}\n", mib, r.method, t_arm,
           gib / t_arm, r.rounds, r.map_runs, r.prime_s, r.markers_s, r.pageout_s, r.evict_s,
           r.map_s);
    swapstub_free(s);
    munmap(mem, len);
    g_free(control);
    g_free(device);
    g_free(export_name);
    return 0;
}
