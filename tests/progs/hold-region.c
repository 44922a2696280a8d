/* hold-region: a stand-in for a process migrated from outside (like a
 * stock QEMU waiting for -incoming): maps a region, prints its address,
 * and leaves it alone until told to check it.
 *
 *   hold-region --mib N [--shared] [--sums CRCFILE] [--touch-every N]
 *
 * Prints "ADDR=0x... LEN=..." and waits. On SIGUSR1 it reads every page
 * and compares it with CRCFILE (mkimage's checksums): prints
 * "CHECK verified=N wrong=M" and exits 0 if all are right, 1 otherwise.
 * SIGTERM ends it. SIGUSR2 drops page 100 (MADV_DONTNEED, as a QEMU
 * discarding RAM would: no read of the device) and prints "DROPPED
 * page=100". --shared maps shared memory (which arming must refuse).
 * --touch-every N writes a non-zero byte into every Nth page first and
 * leaves the others untouched (a source whose idle RAM is holes). */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include <glib.h>

int main(int argc, char **argv)
{
    gint mib = 16;
    gboolean shared = FALSE, thp = FALSE;
    char *sums = NULL;
    gint touch_every = 0;
    GOptionEntry entries[] = {
        { "mib", 0, 0, G_OPTION_ARG_INT, &mib, "region size", "MIB" },
        { "shared", 0, 0, G_OPTION_ARG_NONE, &shared, "map shared memory", NULL },
        { "thp", 0, 0, G_OPTION_ARG_NONE, &thp,
          "MADV_HUGEPAGE, as QEMU does for guest RAM", NULL },
        { "sums", 0, 0, G_OPTION_ARG_FILENAME, &sums, "mkimage checksums", "FILE" },
        { "touch-every", 0, 0, G_OPTION_ARG_INT, &touch_every, "write every Nth page", "N" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_autoptr(GError) error = NULL;
    g_autoptr(GOptionContext) ctx = g_option_context_new("- hold a region for swapstub");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &error) || mib <= 0) {
        fprintf(stderr, "hold-region: %s\n", error ? error->message : "--mib must be > 0");
        return 2;
    }
    size_t len = (size_t)mib << 20;
    unsigned char *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
                            (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        fprintf(stderr, "hold-region: mmap of %d MiB failed: %s\n", mib, strerror(errno));
        return 2;
    }
    if (thp && madvise(m, len, MADV_HUGEPAGE) < 0) {
        fprintf(stderr, "hold-region: MADV_HUGEPAGE of %d MiB failed: %s\n", mib, strerror(errno));
        return 2;
    }
    for (size_t off = 0; touch_every > 0 && off < len; off += (size_t)touch_every * 4096)
        m[off + 7] = (unsigned char)(1 + off / 4096 % 255);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    printf("ADDR=%p LEN=%zu\n", (void *)m, len);
    fflush(stdout);
    int sig = 0;
    while (sigwait(&set, &sig) == 0 && sig == SIGUSR2) {
        enum { DROP_PAGE = 100 };
        if (len <= (size_t)DROP_PAGE * 4096 ||
            madvise(m + (size_t)DROP_PAGE * 4096, 4096, MADV_DONTNEED) < 0) {
            fprintf(stderr, "hold-region: MADV_DONTNEED of page %d failed: %s\n", DROP_PAGE,
                    len <= (size_t)DROP_PAGE * 4096 ? "region too small" : strerror(errno));
            return 2;
        }
        printf("DROPPED page=%d\n", DROP_PAGE);
        fflush(stdout);
    }
    if (sig != SIGUSR1) {
        g_free(sums);
        return 0;
    }
    if (!sums) {
        fprintf(stderr, "hold-region: SIGUSR1 without --sums: nothing to check against\n");
        return 2;
    }
    FILE *f = fopen(sums, "re");
    if (!f) {
        fprintf(stderr, "hold-region: cannot open %s: %s\n", sums, strerror(errno));
        g_free(sums);
        return 2;
    }
    g_free(sums);
    unsigned long long page;
    unsigned crc;
    uint64_t verified = 0, wrong = 0, pages = len / 4096;
    while (fscanf(f, "%llu %x", &page, &crc) == 2 && page < pages) {
        if ((uint32_t)crc32(0L, m + page * 4096, 4096) == crc)
            verified++;
        else if (wrong++ < 10)
            fprintf(stderr, "hold-region: WRONG PAGE %llu\n", page);
    }
    fclose(f);
    printf("CHECK verified=%" G_GUINT64_FORMAT " wrong=%" G_GUINT64_FORMAT " pages=%"
           G_GUINT64_FORMAT "\n", verified, wrong, pages);
    return wrong == 0 && verified == pages ? 0 : 1;
}
