/* madv-time: the kernel's part of arming with MADV_SWAPSTUB, alone: one
 * madvise() over N MiB of fresh memory, then one read of the region's
 * pagemap, then munmap (which frees the slots). Needs a kernel with
 * mm-patch-madvise and a stub-only swap device (setup-swap.sh --stub).
 * For bench/arm-madvise.sh's breakdown of libswapstub's arming time.
 *
 *   madv-time --mib N */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <glib.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    gint mib = 1024;
    GOptionEntry entries[] = {
        { "mib", 0, 0, G_OPTION_ARG_INT, &mib, "region size", "MIB" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_autoptr(GError) error = NULL;
    g_autoptr(GOptionContext) ctx = g_option_context_new("- time MADV_SWAPSTUB alone");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &error) || mib <= 0) {
        fprintf(stderr, "madv-time: %s\n", error ? error->message : "--mib must be > 0");
        return 2;
    }
    g_autofree char *num = NULL;
    if (!g_file_get_contents("/sys/kernel/mm/swap/swapstub", &num, NULL, &error)) {
        fprintf(stderr, "madv-time: %s (needs a kernel with mm-patch-madvise)\n",
                error->message);
        return 2;
    }
    int advice = atoi(num);
    size_t pages = (size_t)mib * 256, len = pages * 4096;
    void *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        fprintf(stderr, "madv-time: mmap of %d MiB failed: %s\n", mib, strerror(errno));
        return 2;
    }
    madvise(mem, len, MADV_NOHUGEPAGE);
    double t0 = now_s();
    if (madvise(mem, len, advice) < 0) {
        fprintf(stderr, "madv-time: madvise(MADV_SWAPSTUB=%d) of %d MiB failed: %s (is there a "
                "stub-only swap device? setup-swap.sh --stub)\n", advice, mib, strerror(errno));
        return 1;
    }
    double t1 = now_s();
    int fd = open("/proc/self/pagemap", O_RDONLY);
    uint64_t *pm = g_new(uint64_t, pages);
    if (fd < 0 || pread(fd, pm, pages * 8, (off_t)((uintptr_t)mem / 4096 * 8)) !=
                      (ssize_t)(pages * 8)) {
        fprintf(stderr, "madv-time: reading /proc/self/pagemap failed: %s\n", strerror(errno));
        return 1;
    }
    double t2 = now_s();
    size_t swapped = 0;
    for (size_t i = 0; i < pages; i++)
        swapped += (pm[i] >> 62) & 1;
    munmap(mem, len);
    double t3 = now_s();
    printf("{\"mib\":%d,\"madvise_s\":%.3f,\"pagemap_s\":%.3f,\"munmap_s\":%.3f,"
           "\"swapped\":%zu,\"pages\":%zu}\n", mib, t1 - t0, t2 - t1, t3 - t2, swapped, pages);
    close(fd);
    g_free(pm);
    return swapped == pages ? 0 : 1;
}
