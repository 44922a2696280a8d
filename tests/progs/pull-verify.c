/* pull-verify: read a destination swap device in slot order and check
 * every slot against the source page the map gives it (by the checksum
 * list mkimage wrote); unmapped slots must read as zeros.
 *
 *   pull-verify (--uri NBD_URI | --file PATH) [--skip SLOT]... MAPFILE CRCFILE SLOTS
 *
 * --uri reads through libnbd (the destination's socket, demand faults
 * included when pages are still remote); --file reads a block device or
 * file (the kernel's view). --skip leaves out slots a test changed itself.
 * Exit 0 if every slot matches, 1 on any mismatch (the first ones are
 * listed), 2 if the device could not be read at all. */
#include <fcntl.h>
#include <libnbd.h>
#include <unistd.h>

#include "pull-common.h"

#define CHUNK_PAGES 256              /* 1 MiB per read */
#define MAX_REPORTED 10

typedef struct {
    struct nbd_handle *nbd;
    int fd;
    const char *name;
} Reader;

static void reader_open(Reader *r, const char *uri, const char *file, uint64_t slots)
{
    int64_t size;
    if (uri) {
        r->nbd = nbd_create();
        if (!r->nbd || nbd_connect_uri(r->nbd, uri) < 0)
            pull_die("cannot connect to %s: %s", uri, nbd_get_error());
        size = nbd_get_size(r->nbd);
        r->name = uri;
    } else {
        r->fd = open(file, O_RDONLY | O_CLOEXEC);
        if (r->fd < 0)
            pull_die("cannot open %s: %s", file, strerror(errno));
        size = lseek(r->fd, 0, SEEK_END);
        r->name = file;
    }
    if (size < 0 || (uint64_t)size != slots * PULL_PAGE)
        pull_die("%s has %" PRId64 " bytes, expected %" PRIu64 " slots of 4 KiB", r->name,
                 size, slots);
}

static void reader_read(Reader *r, void *buf, size_t len, uint64_t off)
{
    if (r->nbd) {
        if (nbd_pread(r->nbd, buf, len, off, 0) < 0)
            pull_die("reading %s at slot %" PRIu64 ": %s", r->name, off / PULL_PAGE,
                     nbd_get_error());
        return;
    }
    for (size_t done = 0; done < len;) {
        ssize_t n = pread(r->fd, (char *)buf + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            pull_die("reading %s at slot %" PRIu64 ": %s", r->name, (off + done) / PULL_PAGE,
                     n < 0 ? strerror(errno) : "unexpected end");
        done += (size_t)n;
    }
}

int main(int argc, char **argv)
{
    char *uri = NULL, *file = NULL;
    char **skip_args = NULL;
    GOptionEntry entries[] = {
        { "uri", 0, 0, G_OPTION_ARG_STRING, &uri, "Read through libnbd from this URI", "URI" },
        { "file", 0, 0, G_OPTION_ARG_FILENAME, &file, "Read this block device or file", "PATH" },
        { "skip", 0, 0, G_OPTION_ARG_STRING_ARRAY, &skip_args, "Do not check this slot", "SLOT" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_set_prgname("pull-verify");
    g_autoptr(GError) error = NULL;
    g_autoptr(GOptionContext) ctx =
        g_option_context_new("MAPFILE CRCFILE SLOTS - check a destination against its source");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &error))
        pull_die("%s (see --help)", error->message);
    if (argc != 4 || (uri != NULL) == (file != NULL))
        pull_die("usage: pull-verify (--uri URI | --file PATH) [--skip SLOT]... MAPFILE "
                 "CRCFILE SLOTS");
    uint64_t slots = pull_parse_u64("SLOTS", argv[3]), pages;
    uint32_t *crcs = pull_load_crcs(argv[2], &pages);
    uint64_t *table = pull_load_map(argv[1], slots, pages);
    for (char **s = skip_args; s && *s; s++) {
        uint64_t v = pull_parse_u64("--skip", *s);
        if (v >= slots)
            pull_die("--skip %" PRIu64 " is past the %" PRIu64 " slots", v, slots);
        table[v] = PULL_UNMAPPED - 1;            /* marker: not checked */
    }

    Reader r = { .fd = -1 };
    reader_open(&r, uri, file, slots);
    unsigned char *buf = g_malloc(CHUNK_PAGES * PULL_PAGE);
    const uint32_t zero_crc = pull_zero_crc();
    uint64_t bad = 0, mapped = 0, unmapped = 0, skipped = 0;
    gint64 t0 = g_get_monotonic_time();
    for (uint64_t s0 = 0; s0 < slots; s0 += CHUNK_PAGES) {
        uint64_t n = MIN((uint64_t)CHUNK_PAGES, slots - s0);
        reader_read(&r, buf, n * PULL_PAGE, s0 * PULL_PAGE);
        for (uint64_t i = 0; i < n; i++) {
            uint64_t s = s0 + i, page = table[s];
            if (page == PULL_UNMAPPED - 1) {
                skipped++;
                continue;
            }
            uint32_t got = pull_crc(buf + i * PULL_PAGE);
            uint32_t want = page == PULL_UNMAPPED ? zero_crc : crcs[page];
            page == PULL_UNMAPPED ? unmapped++ : mapped++;
            if (got == want)
                continue;
            if (bad++ < MAX_REPORTED) {
                if (page == PULL_UNMAPPED)
                    fprintf(stderr, "pull-verify: slot %" PRIu64 " is unmapped but reads crc "
                            "%08" PRIx32 ", not zeros\n", s, got);
                else
                    fprintf(stderr, "pull-verify: slot %" PRIu64 " (source page %" PRIu64
                            ") reads crc %08" PRIx32 ", the source page has %08" PRIx32 "%s\n",
                            s, page, got, want, got == zero_crc ? " (got zeros)" : "");
            }
        }
    }
    double secs = (double)(g_get_monotonic_time() - t0) / 1e6;
    if (r.nbd) {
        nbd_shutdown(r.nbd, 0);
        nbd_close(r.nbd);
    } else {
        close(r.fd);
    }
    printf("pull-verify: %s: %" PRIu64 " slots read in %.2f s: %" PRIu64 " mapped, %" PRIu64
           " unmapped, %" PRIu64 " skipped, %" PRIu64 " wrong\n", r.name, slots, secs, mapped,
           unmapped, skipped, bad);
    g_free(buf);
    g_free(table);
    g_free(crcs);
    g_free(uri);
    g_free(file);
    g_strfreev(skip_args);
    return bad ? 1 : 0;
}
