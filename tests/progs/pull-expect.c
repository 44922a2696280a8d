/* pull-expect: the image a destination swap device must equal once it has
 * pulled everything: slot S holds the source page the map gives it, and
 * unmapped slots are zero. For comparing whole devices with cmp.
 *
 *   pull-expect SOURCE_IMAGE MAPFILE SLOTS OUT
 *
 * OUT is written sparse (unmapped slots and source holes stay holes). */
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pull-common.h"

static void read_all(int fd, const char *path, void *buf, size_t len, uint64_t off)
{
    for (size_t done = 0; done < len;) {
        ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            pull_die("reading %s at %" PRIu64 ": %s", path, off + done,
                     n < 0 ? strerror(errno) : "unexpected end of file");
        done += (size_t)n;
    }
}

static void write_all(int fd, const char *path, const void *buf, size_t len, uint64_t off)
{
    for (size_t done = 0; done < len;) {
        ssize_t n = pwrite(fd, (const char *)buf + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            pull_die("writing %s at %" PRIu64 ": %s (disk full?)", path, off + done,
                     n < 0 ? strerror(errno) : "short write");
        done += (size_t)n;
    }
}

static bool all_zero(const unsigned char *p, size_t len)
{
    return len == 0 || (p[0] == 0 && memcmp(p, p + 1, len - 1) == 0);
}

int main(int argc, char **argv)
{
    g_set_prgname("pull-expect");
    if (argc != 5)
        pull_die("usage: pull-expect SOURCE_IMAGE MAPFILE SLOTS OUT");
    const char *src_path = argv[1], *out_path = argv[4];
    uint64_t slots = pull_parse_u64("SLOTS", argv[3]);
    int src = open(src_path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (src < 0 || fstat(src, &st) < 0)
        pull_die("cannot open the source image %s: %s", src_path, strerror(errno));
    uint64_t pages = (uint64_t)st.st_size / PULL_PAGE;
    uint64_t *table = pull_load_map(argv[2], slots, pages);

    int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0)
        pull_die("cannot create %s: %s", out_path, strerror(errno));
    if (ftruncate(out, (off_t)(slots * PULL_PAGE)) < 0)
        pull_die("ftruncate %s: %s", out_path, strerror(errno));
    unsigned char page[PULL_PAGE];
    for (uint64_t s = 0; s < slots; s++) {
        if (table[s] == PULL_UNMAPPED)
            continue;
        read_all(src, src_path, page, PULL_PAGE, table[s] * PULL_PAGE);
        if (!all_zero(page, PULL_PAGE))
            write_all(out, out_path, page, PULL_PAGE, s * PULL_PAGE);
    }
    if (close(out) < 0)
        pull_die("closing %s: %s", out_path, strerror(errno));
    close(src);
    g_free(table);
    return 0;
}
