#include "file-export.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nbd-proto.h"
#include "proc-mem-holes.h"

typedef struct {
    int fd;
    char *path;
    uint64_t base;     /* export offset 0 is file offset base */
    ProcMemHoles *holes;   /* a /proc/PID/mem window: its untouched pages */
} FileExport;

static FileExport *fx(Export *e) { return e->impl; }

static int fe_pread(Export *e, void *buf, uint32_t len, uint64_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fx(e)->fd, (char *)buf + done, len - done,
                          (off_t)(fx(e)->base + off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno;
        if (n == 0) {
            /* The file shrank under us (the source VM went away?): refuse
             * rather than invent zeros. */
            g_warning("source export '%s': %s ends at %" G_GUINT64_FORMAT " but the export "
                      "is %" G_GUINT64_FORMAT " bytes: was it truncated?", e->name,
                      fx(e)->path, off + done, e->size);
            return EIO;
        }
        done += (size_t)n;
    }
    return 0;
}

static int fe_readonly(Export *e, uint32_t len, uint64_t off)
{
    (void)e; (void)len; (void)off;
    return EPERM;   /* transmission.c refuses writes to read-only exports first */
}

static int fe_pwrite(Export *e, const void *buf, uint32_t len, uint64_t off)
{
    (void)buf;
    return fe_readonly(e, len, off);
}

static int fe_flush(Export *e)
{
    (void)e;
    return 0;
}

/* Data and holes from SEEK_DATA/SEEK_HOLE; a file system that cannot tell
 * reports everything as data, which is always correct. */
static int fe_block_status(Export *e, uint32_t len, uint64_t off, GArray *ext)
{
    int fd = fx(e)->fd;
    if (fx(e)->holes)
        return proc_mem_holes_extents(fx(e)->holes, len, off, ext);
    if (fx(e)->base) {
        /* A window lseek cannot describe, and not one of a process's
         * memory we can: all data. */
        extent_append(ext, len, 0);
        return 0;
    }
    uint64_t end = off + len;
    while (off < end) {
        off_t data = lseek(fd, (off_t)off, SEEK_DATA);
        if (data < 0 && errno == ENXIO)
            data = (off_t)end;           /* only a hole from here on */
        else if (data < 0) {
            extent_append(ext, (uint32_t)(end - off), 0);
            return 0;
        }
        if ((uint64_t)data > off) {
            uint64_t hole_end = MIN((uint64_t)data, end);
            extent_append(ext, (uint32_t)(hole_end - off), NBD_STATE_HOLE | NBD_STATE_ZERO);
            off = hole_end;
            continue;
        }
        off_t hole = lseek(fd, (off_t)off, SEEK_HOLE);
        uint64_t data_end = hole < 0 ? end : MIN((uint64_t)hole, end);
        if (data_end <= off)
            data_end = end;
        extent_append(ext, (uint32_t)(data_end - off), 0);
        off = data_end;
    }
    return 0;
}

static void fe_stats_json(Export *e, GString *out)
{
    g_string_append_printf(out, "{\"file\":\"%s\",\"size\":%" G_GUINT64_FORMAT "}",
                           fx(e)->path, e->size);
}

static void fe_destroy(Export *e)
{
    close(fx(e)->fd);
    proc_mem_holes_close(fx(e)->holes);
    g_free(fx(e)->path);
    g_free(fx(e));
}

static const ExportOps file_ops = {
    .pread = fe_pread,
    .pwrite = fe_pwrite,
    .trim = fe_readonly,
    .zero = fe_readonly,
    .flush = fe_flush,
    .block_status = fe_block_status,
    .stats_json = fe_stats_json,
    .destroy = fe_destroy,
};

/* "PATH@OFFSET+SIZE" (numbers in C syntax) selects a window of PATH, e.g.
 * of /proc/PID/mem, whose size lseek cannot tell. */
static bool parse_window(char *path, uint64_t *base, uint64_t *size)
{
    char *at = strrchr(path, '@'), *plus = at ? strchr(at, '+') : NULL, *end;
    if (!at || !plus)
        return false;
    uint64_t b = g_ascii_strtoull(at + 1, &end, 0);
    if (end != plus || plus == at + 1)
        return false;
    uint64_t sz = g_ascii_strtoull(plus + 1, &end, 0);
    if (*end || end == plus + 1 || sz == 0)
        return false;
    *at = 0;
    *base = b;
    *size = sz;
    return true;
}

/* What the RAM behind path is: the same file (device and inode), or the
 * same process (pid and start time: a new process with a recycled pid is
 * another one) at the same address. */
static char *ram_identity(const char *path, const struct stat *st, uint64_t base, bool windowed)
{
    int pid;
    char rest[8];
    if (windowed && sscanf(path, "/proc/%d/mem%7s", &pid, rest) == 1) {
        g_autofree char *statpath = g_strdup_printf("/proc/%d/stat", pid);
        g_autofree char *stat = NULL;
        const char *after;
        unsigned long long start;
        if (g_file_get_contents(statpath, &stat, NULL, NULL) && (after = strrchr(stat, ')')) &&
            sscanf(after + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d "
                   "%*d %*d %*d %llu", &start) == 1)
            return g_strdup_printf("process:%d:%llu@%" G_GUINT64_FORMAT, pid, start, base);
    }
    return g_strdup_printf("file:%" G_GUINT64_FORMAT ":%" G_GUINT64_FORMAT "@%" G_GUINT64_FORMAT,
                           (uint64_t)st->st_dev, (uint64_t)st->st_ino, base);
}

Export *file_export_new(const char *spec, GError **error)
{
    const char *eq = strchr(spec, '=');
    if (!eq || eq == spec || eq[1] == 0) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "--export '%s' is not NAME=FILE (e.g. mem=/dev/shm/vm1.ram)", spec);
        return NULL;
    }
    g_autofree char *name = g_strndup(spec, (gsize)(eq - spec));
    g_autofree char *path = g_strdup(eq + 1);
    uint64_t base = 0, window = 0;
    bool windowed = parse_window(path, &base, &window);
    if (strlen(name) > NBD_MAX_STRING) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "export name in --export is longer than %d bytes", NBD_MAX_STRING);
        return NULL;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot open the RAM image %s for export '%s': %s", path, name,
                    g_strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if (!windowed && (!S_ISREG(st.st_mode) || st.st_size == 0)) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                    "%s is not a non-empty regular file; give the file backing the guest's "
                    "RAM (memory-backend-file mem-path=...)", path);
        close(fd);
        return NULL;
    }
    FileExport *f = g_new0(FileExport, 1);
    f->fd = fd;
    f->path = g_strdup(path);
    f->base = base;
    if (windowed)
        f->holes = proc_mem_holes_open(path, base);
    Export *e = g_new0(Export, 1);
    e->name = g_steal_pointer(&name);
    e->size = windowed ? window : (uint64_t)st.st_size;
    e->read_only = true;
    e->multi_conn = true;
    e->identity = ram_identity(path, &st, base, windowed);
    e->ops = &file_ops;
    e->impl = f;
    return e;
}
