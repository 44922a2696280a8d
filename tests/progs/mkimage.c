/* mkimage: write a migration source image (a guest RAM block as a file)
 * with the kinds of pages a source really has, and its checksum list.
 *
 *   mkimage [--seed N] [--all-random] FILE MIB CRCFILE
 *
 * Pages come in runs of four kinds: random data; all-zero pages that are
 * written (data as far as SEEK_DATA is concerned); zero pages left as holes
 * (the file is ftruncate'd to its size and only data pages are written, so
 * SEEK_HOLE sees them and the source reports them as zero); and copies of
 * earlier random pages (duplicates a puller must not confuse). --all-random
 * makes every page random data, so a puller can skip nothing (benchmarks).
 * CRCFILE gets one line per page, "PAGE CRC32" (zlib crc32, hex). The same
 * seed gives the same image. Prints one summary line. */
#include <fcntl.h>
#include <unistd.h>

#include "pull-common.h"

#define POOL 16                      /* earlier random pages kept for copies */
#define BATCH_PAGES 256              /* contiguous data pages per pwrite */

typedef struct {
    uint64_t state;
} Rng;

/* splitmix64: fast, and enough for test data. */
static uint64_t rng_next(Rng *r)
{
    uint64_t z = (r->state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static uint64_t rng_range(Rng *r, uint64_t lo, uint64_t hi)   /* [lo, hi] */
{
    return lo + rng_next(r) % (hi - lo + 1);
}

typedef struct {
    int fd;
    const char *path;
    unsigned char *buf;              /* BATCH_PAGES pages waiting to be written */
    uint64_t buf_first, buf_n;       /* their first page and count */
} Writer;

static void flush_batch(Writer *w)
{
    size_t len = w->buf_n * PULL_PAGE, done = 0;
    while (done < len) {
        ssize_t n = pwrite(w->fd, w->buf + done, len - done,
                           (off_t)(w->buf_first * PULL_PAGE + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            pull_die("writing %s at page %" PRIu64 ": %s (disk full?)", w->path, w->buf_first,
                     n < 0 ? strerror(errno) : "short write");
        done += (size_t)n;
    }
    w->buf_n = 0;
}

/* Queue data page `page` (pages arrive in increasing order). */
static unsigned char *data_page(Writer *w, uint64_t page)
{
    if (w->buf_n && (w->buf_first + w->buf_n != page || w->buf_n == BATCH_PAGES))
        flush_batch(w);
    if (!w->buf_n)
        w->buf_first = page;
    return w->buf + (w->buf_n++) * PULL_PAGE;
}

static void fill_random(Rng *r, unsigned char *p)
{
    for (unsigned i = 0; i < PULL_PAGE; i += 8) {
        uint64_t v = rng_next(r);
        memcpy(p + i, &v, 8);
    }
}

int main(int argc, char **argv)
{
    gint64 seed = 1;
    gboolean all_random = FALSE;
    GOptionEntry entries[] = {
        { "seed", 0, 0, G_OPTION_ARG_INT64, &seed, "Seed of the page layout and data", "N" },
        { "all-random", 0, 0, G_OPTION_ARG_NONE, &all_random,
          "Every page random data (nothing a puller could skip)", NULL },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_set_prgname("mkimage");
    g_autoptr(GError) error = NULL;
    g_autoptr(GOptionContext) ctx = g_option_context_new("FILE MIB CRCFILE - write a source image");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &error))
        pull_die("%s (see --help)", error->message);
    if (argc != 4)
        pull_die("usage: mkimage [--seed N] [--all-random] FILE MIB CRCFILE");
    const char *path = argv[1], *crc_path = argv[3];
    uint64_t mib = pull_parse_u64("MIB", argv[2]);
    if (mib == 0 || mib > (UINT64_C(1) << 20))
        pull_die("MIB %" PRIu64 " is out of range (1..1048576)", mib);
    uint64_t pages = mib * (1048576 / PULL_PAGE);

    Writer w = { .path = path, .buf = g_malloc(BATCH_PAGES * PULL_PAGE) };
    w.fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w.fd < 0)
        pull_die("cannot create %s: %s", path, strerror(errno));
    /* The size first: every page never written below stays a hole. */
    if (ftruncate(w.fd, (off_t)(pages * PULL_PAGE)) < 0)
        pull_die("ftruncate %s to %" PRIu64 " MiB: %s", path, mib, strerror(errno));

    Rng r = { (uint64_t)seed };
    uint32_t *crcs = g_new(uint32_t, pages);
    unsigned char (*pool)[PULL_PAGE] = g_malloc(POOL * PULL_PAGE);
    unsigned pool_n = 0;
    uint64_t counts[4] = { 0 };      /* random, zero data, hole, repeated */
    const uint32_t zero_crc = pull_zero_crc();

    for (uint64_t page = 0; page < pages;) {
        unsigned kind = 0;
        uint64_t run;
        if (!all_random) {
            uint64_t roll = rng_range(&r, 0, 99);
            kind = roll < 50 ? 0 : roll < 60 ? 1 : roll < 85 ? 2 : 3;
            if (kind == 3 && pool_n == 0)
                kind = 0;
        }
        switch (kind) {
        case 0: run = rng_range(&r, 1, 64); break;
        case 1: run = rng_range(&r, 1, 8); break;
        case 2: run = rng_range(&r, 1, rng_range(&r, 0, 3) ? 32 : 256); break;
        default: run = rng_range(&r, 1, 8); break;
        }
        if (all_random)
            run = pages - page;
        run = MIN(run, pages - page);
        for (uint64_t i = 0; i < run; i++, page++) {
            counts[kind]++;
            if (kind == 2) {
                crcs[page] = zero_crc;
                continue;
            }
            unsigned char *p = data_page(&w, page);
            if (kind == 0) {
                fill_random(&r, p);
                if (!all_random && rng_range(&r, 0, 7) == 0) {
                    unsigned slot = pool_n < POOL ? pool_n++ : (unsigned)rng_range(&r, 0, POOL - 1);
                    memcpy(pool[slot], p, PULL_PAGE);
                }
            } else if (kind == 1) {
                memset(p, 0, PULL_PAGE);
            } else {
                memcpy(p, pool[rng_range(&r, 0, pool_n - 1)], PULL_PAGE);
            }
            crcs[page] = pull_crc(p);
        }
    }
    if (w.buf_n)
        flush_batch(&w);
    if (fsync(w.fd) < 0 || close(w.fd) < 0)
        pull_die("finishing %s: %s", path, strerror(errno));

    FILE *f = fopen(crc_path, "w");
    if (!f)
        pull_die("cannot create %s: %s", crc_path, strerror(errno));
    for (uint64_t i = 0; i < pages; i++)
        fprintf(f, "%" PRIu64 " %08" PRIx32 "\n", i, crcs[i]);
    if (fclose(f) != 0)
        pull_die("writing %s: %s (disk full?)", crc_path, strerror(errno));

    printf("%s: %" PRIu64 " pages: %" PRIu64 " random, %" PRIu64 " zero (written), %" PRIu64
           " zero (holes), %" PRIu64 " repeated\n", path, pages, counts[0], counts[1], counts[2],
           counts[3]);
    g_free(pool);
    g_free(crcs);
    g_free(w.buf);
    return 0;
}
