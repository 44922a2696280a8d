/* pull-rw: one write, trim or checked read of a destination slot, for the
 * tests of what guest writes do to pages that are still on the source.
 *
 *   pull-rw URI write SLOT BYTE [OFFSET LENGTH]   fill (part of) the slot
 *   pull-rw URI trim SLOT COUNT                   discard COUNT slots
 *   pull-rw URI check SLOT zero                   the slot reads as zeros
 *   pull-rw URI check SLOT fill BYTE              ... as BYTE repeated
 *   pull-rw URI check SLOT image FILE PAGE [BYTE OFFSET LENGTH]
 *        ... as page PAGE of the source image FILE, with [OFFSET, +LENGTH)
 *            replaced by BYTE when given (a partial write on top of it)
 *
 * Exit status: 0 done / matches, 1 the slot holds other data (a summary of
 * the difference is printed), 3 the server answered an error (its errno
 * name is printed, e.g. EIO), 2 usage or connection failure. */
#include <fcntl.h>
#include <libnbd.h>
#include <unistd.h>

#include "pull-common.h"

static unsigned parse_byte(const char *s)
{
    uint64_t v = pull_parse_u64("BYTE", s);
    if (v > 255)
        pull_die("BYTE %s is not 0..255", s);
    return (unsigned)v;
}

static void load_image_page(const char *path, uint64_t page, unsigned char *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        pull_die("cannot open %s: %s", path, strerror(errno));
    ssize_t n = pread(fd, out, PULL_PAGE, (off_t)(page * PULL_PAGE));
    if (n != PULL_PAGE)
        pull_die("reading page %" PRIu64 " of %s: %s", page, path,
                 n < 0 ? strerror(errno) : "past the end");
    close(fd);
}

static int server_error(const char *what, uint64_t slot)
{
    int e = nbd_get_errno();
    fprintf(stderr, "pull-rw: %s of slot %" PRIu64 " failed: %s (%s)\n", what, slot,
            nbd_get_error(), e ? strerrorname_np(e) : "no errno");
    return 3;
}

int main(int argc, char **argv)
{
    g_set_prgname("pull-rw");
    if (argc < 4)
        pull_die("usage: pull-rw URI write|trim|check SLOT ... (see the comment in pull-rw.c)");
    const char *uri = argv[1], *op = argv[2];
    uint64_t slot = pull_parse_u64("SLOT", argv[3]);
    struct nbd_handle *h = nbd_create();
    if (!h || nbd_connect_uri(h, uri) < 0)
        pull_die("cannot connect to %s: %s", uri, nbd_get_error());
    uint64_t off = slot * PULL_PAGE;
    int rc = 0;
    unsigned char want[PULL_PAGE], got[PULL_PAGE];

    if (strcmp(op, "write") == 0 && (argc == 5 || argc == 7)) {
        uint64_t woff = argc == 7 ? pull_parse_u64("OFFSET", argv[5]) : 0;
        uint64_t wlen = argc == 7 ? pull_parse_u64("LENGTH", argv[6]) : PULL_PAGE;
        if (wlen == 0 || woff + wlen > PULL_PAGE)
            pull_die("OFFSET+LENGTH must lie inside the 4 KiB slot");
        memset(want, (int)parse_byte(argv[4]), PULL_PAGE);
        if (nbd_pwrite(h, want, wlen, off + woff, 0) < 0 || nbd_flush(h, 0) < 0)
            rc = server_error("write", slot);
    } else if (strcmp(op, "trim") == 0 && argc == 5) {
        uint64_t count = pull_parse_u64("COUNT", argv[4]);
        if (nbd_trim(h, count * PULL_PAGE, off, 0) < 0)
            rc = server_error("trim", slot);
    } else if (strcmp(op, "check") == 0 && argc >= 5) {
        const char *kind = argv[4];
        if (strcmp(kind, "zero") == 0 && argc == 5) {
            memset(want, 0, PULL_PAGE);
        } else if (strcmp(kind, "fill") == 0 && argc == 6) {
            memset(want, (int)parse_byte(argv[5]), PULL_PAGE);
        } else if (strcmp(kind, "image") == 0 && (argc == 7 || argc == 10)) {
            load_image_page(argv[5], pull_parse_u64("PAGE", argv[6]), want);
            if (argc == 10) {
                uint64_t poff = pull_parse_u64("OFFSET", argv[8]);
                uint64_t plen = pull_parse_u64("LENGTH", argv[9]);
                if (poff + plen > PULL_PAGE)
                    pull_die("OFFSET+LENGTH must lie inside the 4 KiB slot");
                memset(want + poff, (int)parse_byte(argv[7]), plen);
            }
        } else {
            pull_die("usage: check SLOT zero | fill BYTE | image FILE PAGE [BYTE OFFSET LENGTH]");
        }
        if (nbd_pread(h, got, PULL_PAGE, off, 0) < 0) {
            rc = server_error("read", slot);
        } else if (memcmp(got, want, PULL_PAGE) != 0) {
            unsigned first = 0, last = 0, n = 0;
            for (unsigned i = 0; i < PULL_PAGE; i++)
                if (got[i] != want[i]) {
                    if (!n++)
                        first = i;
                    last = i;
                }
            fprintf(stderr, "pull-rw: slot %" PRIu64 " differs from what was expected (%s) in "
                    "%u bytes, offsets %u..%u; first: got 0x%02x, want 0x%02x\n", slot, kind,
                    n, first, last, got[first], want[first]);
            rc = 1;
        }
    } else {
        pull_die("usage: pull-rw URI write SLOT BYTE [OFFSET LENGTH] | trim SLOT COUNT | "
                 "check SLOT ...");
    }
    nbd_shutdown(h, 0);
    nbd_close(h);
    return rc;
}
