/* arm-finish: the cost of swapcopy's own steps on a region of this
 * process, for bench/swapstub.sh.
 *
 *   arm-finish --control CTL --device DEV --export NAME --mib N [--faults K]
 *
 * Arms N MiB (timed), takes K demand faults on random pages while the
 * daemon's background stream is off (each first touch timed: the fault
 * latency a workload sees), turns streaming on, waits until every page is
 * local, then finishes (timed: swapping every page in for good). Prints
 * one JSON line. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
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

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static bool ctl(const char *control, const char *line)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *ans = swapstub_control(control, line, &err);
    if (!ans)
        fprintf(stderr, "arm-finish: %s\n", err->message);
    return ans != NULL;
}

int main(int argc, char **argv)
{
    char *control = NULL, *device = NULL, *export_name = NULL;
    gint mib = 1024, faults = 2000;
    GOptionEntry entries[] = {
        { "control", 0, 0, G_OPTION_ARG_FILENAME, &control, "control socket", "P" },
        { "device", 0, 0, G_OPTION_ARG_FILENAME, &device, "swap device", "DEV" },
        { "export", 0, 0, G_OPTION_ARG_STRING, &export_name, "source export", "NAME" },
        { "mib", 0, 0, G_OPTION_ARG_INT, &mib, "region size", "MIB" },
        { "faults", 0, 0, G_OPTION_ARG_INT, &faults, "demand faults to time", "K" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_autoptr(GError) error = NULL;
    g_autoptr(GOptionContext) ctx = g_option_context_new("- time arm, faults, finish");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &error) || !control || !device ||
        !export_name || mib <= 0 || faults < 0) {
        fprintf(stderr, "arm-finish: %s\n", error ? error->message
                : "needs --control, --device, --export, --mib > 0");
        return 2;
    }
    uint64_t pages = (uint64_t)mib * 256, len = pages * 4096;
    unsigned char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        fprintf(stderr, "arm-finish: mmap of %d MiB: %s\n", mib, strerror(errno));
        return 2;
    }
    if (!ctl(control, "policy background off"))
        return 1;
    SwapStubConfig cfg = { .addr = (uint64_t)(uintptr_t)mem, .len = len, .control = control,
                           .device = device, .export_name = export_name };
    SwapStubArmReport r;
    double t0 = now_s();
    SwapStub *s = swapstub_arm(&cfg, &r, &error);
    double t_arm = now_s() - t0;
    if (!s) {
        fprintf(stderr, "arm-finish: arming failed: %s\n", error->message);
        return 1;
    }
    double *lat = g_new(double, (gsize)faults + 1);
    GRand *rng = g_rand_new_with_seed(42);
    volatile unsigned char sink = 0;
    int taken = 0;
    for (int i = 0; i < faults; i++) {
        /* Pages 16 apart at least, so readahead of one fault never serves
         * another (readahead windows are 8 pages). */
        uint64_t p = (uint64_t)g_rand_int_range(rng, 0, (gint32)(pages / 16)) * 16;
        double a = now_s();
        sink ^= mem[p * 4096];
        lat[taken++] = (now_s() - a) * 1e6;
    }
    (void)sink;
    qsort(lat, (size_t)taken, sizeof(double), cmp_double);
    if (!ctl(control, "policy background on"))
        return 1;
    double t1 = now_s();
    if (!ctl(control, "wait-all-local"))
        return 1;
    double t_stream = now_s() - t1;
    double t2 = now_s();
    if (!swapstub_finish(s, false, NULL, NULL, &error)) {
        fprintf(stderr, "arm-finish: finish failed: %s\n", error->message);
        return 1;
    }
    double t_finish = now_s() - t2;
    double gib = (double)len / (1024.0 * 1024 * 1024);
    printf("{\"mib\":%d,\"arm_s\":%.3f,\"arm_gib_s\":%.3f,\"arm_rounds\":%u,"
           "\"cached_after_first_pageout\":%" G_GUINT64_FORMAT ",\"map_runs\":%" G_GUINT64_FORMAT ","
           "\"faults\":%d,\"fault_us_p50\":%.1f,\"fault_us_p99\":%.1f,\"fault_us_max\":%.1f,"
           "\"stream_s\":%.3f,\"finish_s\":%.3f,\"finish_gib_s\":%.3f}\n",
           mib, t_arm, gib / t_arm, r.rounds, r.still_cached_first, r.map_runs, taken,
           taken ? lat[taken / 2] : 0, taken ? lat[taken * 99 / 100] : 0,
           taken ? lat[taken - 1] : 0, t_stream, t_finish, gib / t_finish);
    swapstub_free(s);
    g_rand_free(rng);
    g_free(lat);
    munmap(mem, len);
    g_free(control);
    g_free(device);
    g_free(export_name);
    return 0;
}
