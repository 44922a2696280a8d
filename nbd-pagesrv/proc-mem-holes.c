/* Holes in a window of another process's memory (/proc/PID/mem), which
 * lseek cannot report: a page of a private anonymous mapping that is
 * neither present nor swapped out (/proc/PID/pagemap bits 63 and 62) was
 * never written, or was discarded, and reads as zeros. A patched QEMU
 * source serves its guest RAM this way; without holes, an idle guest's
 * untouched RAM crosses the link in full.
 *
 * Only private anonymous memory qualifies: a non-present page of a file
 * mapping reads the file, of shared memory the shmem object. So every call
 * first checks in /proc/PID/maps that the whole range still lies in such
 * mappings, and otherwise reports data, which is always correct. */
#include "proc-mem-holes.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "export.h"
#include "nbd-proto.h"

#define PM_PRESENT (UINT64_C(1) << 63)
#define PM_SWAPPED (UINT64_C(1) << 62)
#define PAGE 4096u

struct ProcMemHoles {
    char *maps_path;
    int pagemap_fd;
    uint64_t base;                /* address of export offset 0 */
};

ProcMemHoles *proc_mem_holes_open(const char *mem_path, uint64_t base)
{
    unsigned long pid;
    char tail[8];
    if (sscanf(mem_path, "/proc/%lu/%7s", &pid, tail) != 2 || strcmp(tail, "mem") != 0 ||
        base % PAGE)
        return NULL;
    g_autofree char *pagemap = g_strdup_printf("/proc/%lu/pagemap", pid);
    int fd = open(pagemap, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        g_message("cannot open %s (%s): every page of %s is served as data", pagemap,
                  g_strerror(errno), mem_path);
        return NULL;
    }
    ProcMemHoles *h = g_new0(ProcMemHoles, 1);
    h->maps_path = g_strdup_printf("/proc/%lu/maps", pid);
    h->pagemap_fd = fd;
    h->base = base;
    return h;
}

void proc_mem_holes_close(ProcMemHoles *h)
{
    if (!h)
        return;
    close(h->pagemap_fd);
    g_free(h->maps_path);
    g_free(h);
}

/* True if [start, end) lies wholly in private anonymous mappings. maps
 * lists them in address order, so one pass covers the range or not. */
static bool private_anonymous(ProcMemHoles *h, uint64_t start, uint64_t end)
{
    FILE *f = fopen(h->maps_path, "re");
    if (!f)
        return false;
    char line[512];
    uint64_t covered = start;
    while (covered < end && fgets(line, sizeof line, f)) {
        unsigned long long lo, hi, ino;
        char perms[8];
        int path_at = 0;
        if (sscanf(line, "%llx-%llx %7s %*s %*s %llu %n", &lo, &hi, perms, &ino, &path_at) < 4)
            break;
        if (hi <= covered)
            continue;
        const char *path = line + path_at;
        bool anon = perms[3] == 'p' && ino == 0 &&
                    (*path == '\n' || *path == 0 || strncmp(path, "[anon:", 6) == 0 ||
                     strncmp(path, "[heap]", 6) == 0);
        if (lo > covered || !anon)
            break;
        covered = hi;
    }
    fclose(f);
    return covered >= end;
}

int proc_mem_holes_extents(ProcMemHoles *h, uint32_t len, uint64_t off, GArray *ext)
{
    uint64_t addr = h->base + off, end = addr + len;
    uint64_t first = addr / PAGE, last = (end + PAGE - 1) / PAGE;
    if (!private_anonymous(h, first * PAGE, last * PAGE)) {
        extent_append(ext, len, 0);
        return 0;
    }
    g_autofree uint64_t *pm = g_new(uint64_t, last - first);
    size_t want = (size_t)(last - first) * sizeof(uint64_t), got = 0;
    while (got < want) {
        ssize_t n = pread(h->pagemap_fd, (char *)pm + got, want - got,
                          (off_t)(first * sizeof(uint64_t) + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            /* The process is gone, or will not tell: data is always right. */
            extent_append(ext, len, 0);
            return 0;
        }
        got += (size_t)n;
    }
    for (uint64_t p = first, at = addr; p < last; p++) {
        uint64_t page_end = MIN((p + 1) * PAGE, end);
        bool hole = !(pm[p - first] & (PM_PRESENT | PM_SWAPPED));
        extent_append(ext, (uint32_t)(page_end - at), hole ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0);
        at = page_end;
    }
    return 0;
}
