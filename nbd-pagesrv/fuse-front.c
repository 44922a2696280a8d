/* The swap device as a FUSE file (fuse-front.h says why). libfuse's
 * low-level API: the kernel's requests name inodes, and there are two, the
 * mount's root directory and the file "nbd" in it. */
#define FUSE_USE_VERSION 314
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/falloc.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "fuse-front.h"

#define FILE_INO 2
#define FILE_NAME "nbd"
/* The attributes never change while we serve: let the kernel keep them. */
#define ATTR_TIMEOUT_S 3600.0
/* Reads wait on the source for a missing page: enough threads that a few
 * such waits do not hold up page-outs and reads of pages already here. */
#define MAX_THREADS 32
/* A trim or zero of the whole device is split into pieces the export's
 * 32-bit lengths can carry. */
#define RANGE_PIECE (1u << 30)

struct FuseFront {
    Export *e;
    ServerStats *stats;
    char *mountdir;
    dev_t dev;                     /* the mount's device: its fusectl entry */
    struct fuse_session *se;
    GThread *thread;
    bool loop_done;                /* atomic: fuse_session_loop_mt returned */
    GMutex lock;
    GCond done_cond;
};

static void fill_attr(const FuseFront *ff, fuse_ino_t ino, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_uid = getuid();
    st->st_gid = getgid();
    if (ino == FUSE_ROOT_ID) {
        st->st_mode = S_IFDIR | 0700;
        st->st_nlink = 2;
    } else {
        st->st_mode = S_IFREG | (ff->e->read_only ? 0400 : 0600);
        st->st_nlink = 1;
        st->st_size = (off_t)ff->e->size;
        st->st_blksize = 4096;
        st->st_blocks = (blkcnt_t)(ff->e->size / 512);
    }
}

static void account(FuseFront *ff, unsigned cmd, int err, uint64_t bytes, gint64 t0)
{
    server_stats_request(ff->stats, cmd, err ? NBD_EIO : 0, bytes,
                         (uint64_t)(g_get_monotonic_time() - t0));
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    FuseFront *ff = fuse_req_userdata(req);
    if (parent != FUSE_ROOT_ID || strcmp(name, FILE_NAME) != 0) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct fuse_entry_param ep = { .ino = FILE_INO, .attr_timeout = ATTR_TIMEOUT_S,
                                   .entry_timeout = ATTR_TIMEOUT_S };
    fill_attr(ff, FILE_INO, &ep.attr);
    fuse_reply_entry(req, &ep);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)fi;
    if (ino != FUSE_ROOT_ID && ino != FILE_INO) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct stat st;
    fill_attr(fuse_req_userdata(req), ino, &st);
    fuse_reply_attr(req, &st, ATTR_TIMEOUT_S);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    FuseFront *ff = fuse_req_userdata(req);
    if (ino != FILE_INO) {
        fuse_reply_err(req, ino == FUSE_ROOT_ID ? EISDIR : ENOENT);
        return;
    }
    if ((fi->flags & O_ACCMODE) != O_RDONLY && ff->e->read_only) {
        fuse_reply_err(req, EROFS);
        return;
    }
    /* No page cache: every swap-in must reach the export (a cached copy
     * would be a page the slot no longer holds), and the loop device opens
     * the file O_DIRECT anyway. */
    fi->direct_io = 1;
    fi->keep_cache = 0;
    fi->noflush = 1;
    fuse_reply_open(req, fi);
}

/* [off, off + *len) clipped to the export; false if off is past its end. */
static bool clip(const FuseFront *ff, off_t off, size_t *len)
{
    if (off < 0 || (uint64_t)off >= ff->e->size)
        return false;
    *len = (size_t)MIN((uint64_t)*len, ff->e->size - (uint64_t)off);
    return true;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    (void)ino;
    (void)fi;
    FuseFront *ff = fuse_req_userdata(req);
    gint64 t0 = g_get_monotonic_time();
    if (!clip(ff, off, &size) || size == 0) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    if (size > NBD_MAX_REQUEST) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    void *buf = g_try_malloc(size);
    int err = buf ? ff->e->ops->pread(ff->e, buf, (uint32_t)size, (uint64_t)off) : ENOMEM;
    account(ff, NBD_CMD_READ, err, size, t0);
    if (err)
        fuse_reply_err(req, err);
    else
        fuse_reply_buf(req, buf, size);
    g_free(buf);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    (void)ino;
    (void)fi;
    FuseFront *ff = fuse_req_userdata(req);
    gint64 t0 = g_get_monotonic_time();
    size_t len = size;
    if (!clip(ff, off, &len) || len != size) {
        fuse_reply_err(req, ENOSPC);
        return;
    }
    if (size > NBD_MAX_REQUEST) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    int err = size ? ff->e->ops->pwrite(ff->e, buf, (uint32_t)size, (uint64_t)off) : 0;
    account(ff, NBD_CMD_WRITE, err, size, t0);
    if (err)
        fuse_reply_err(req, err);
    else
        fuse_reply_write(req, size);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    (void)ino;
    (void)datasync;
    (void)fi;
    FuseFront *ff = fuse_req_userdata(req);
    gint64 t0 = g_get_monotonic_time();
    int err = ff->e->ops->flush(ff->e);
    account(ff, NBD_CMD_FLUSH, err, 0, t0);
    fuse_reply_err(req, err);
}

/* The loop device turns discards into hole punches and write-zeroes into
 * zeroed ranges: the export's trim and zero. */
static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t length,
                         struct fuse_file_info *fi)
{
    (void)ino;
    (void)fi;
    FuseFront *ff = fuse_req_userdata(req);
    gint64 t0 = g_get_monotonic_time();
    size_t len = (size_t)length;
    if (ff->e->read_only) {
        fuse_reply_err(req, EROFS);
        return;
    }
    if (length <= 0 || !clip(ff, off, &len) || len != (size_t)length) {
        fuse_reply_err(req, length <= 0 ? EINVAL : ENOSPC);
        return;
    }
    unsigned cmd;
    int (*op)(Export *, uint32_t, uint64_t);
    if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) {
        cmd = NBD_CMD_TRIM;
        op = ff->e->ops->trim;
    } else if ((mode & ~FALLOC_FL_KEEP_SIZE) == FALLOC_FL_ZERO_RANGE) {
        cmd = NBD_CMD_WRITE_ZEROES;
        op = ff->e->ops->zero;
    } else if (mode == 0 || mode == FALLOC_FL_KEEP_SIZE) {
        fuse_reply_err(req, 0);   /* every byte of the file already exists */
        return;
    } else {
        fuse_reply_err(req, EOPNOTSUPP);
        return;
    }
    int err = 0;
    for (uint64_t done = 0; !err && done < len; done += RANGE_PIECE)
        err = op(ff->e, (uint32_t)MIN((uint64_t)RANGE_PIECE, len - done), (uint64_t)off + done);
    account(ff, cmd, err, 0, t0);
    fuse_reply_err(req, err);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    (void)fi;
    FuseFront *ff = fuse_req_userdata(req);
    if (ino != FUSE_ROOT_ID) {
        fuse_reply_err(req, ENOTDIR);
        return;
    }
    static const struct { const char *name; fuse_ino_t ino; } entries[] = {
        { ".", FUSE_ROOT_ID }, { "..", FUSE_ROOT_ID }, { FILE_NAME, FILE_INO },
    };
    char buf[512];
    size_t used = 0;
    for (off_t i = off; i >= 0 && (size_t)i < G_N_ELEMENTS(entries); i++) {
        struct stat st;
        fill_attr(ff, entries[i].ino, &st);
        size_t need = fuse_add_direntry(req, buf + used, MIN(size, sizeof buf) - used,
                                        entries[i].name, &st, i + 1);
        if (need > MIN(size, sizeof buf) - used)
            break;
        used += need;
    }
    fuse_reply_buf(req, buf, used);
}

static const struct fuse_lowlevel_ops ops = {
    .lookup = op_lookup,
    .getattr = op_getattr,
    .open = op_open,
    .read = op_read,
    .write = op_write,
    .fsync = op_fsync,
    .fallocate = op_fallocate,
    .readdir = op_readdir,
};

/* libfuse's own messages go to our log, with its level. */
G_GNUC_PRINTF(2, 0)
static void log_from_libfuse(enum fuse_log_level level, const char *fmt, va_list ap)
{
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    g_strchomp(msg);
    if (level <= FUSE_LOG_ERR)
        g_warning("libfuse: %s", msg);
    else if (level <= FUSE_LOG_NOTICE)
        g_message("libfuse: %s", msg);
    else
        g_debug("libfuse: %s", msg);
}

static gpointer serve(gpointer data)
{
    FuseFront *ff = data;
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    int rc = -1;
    if (cfg) {
        /* One /dev/fuse descriptor per thread: no thread waits on
         * another's read of the queue. */
        fuse_loop_cfg_set_clone_fd(cfg, 1);
        fuse_loop_cfg_set_max_threads(cfg, MAX_THREADS);
        rc = fuse_session_loop_mt(ff->se, cfg);
        fuse_loop_cfg_destroy(cfg);
    } else {
        g_warning("FUSE %s: out of memory for the loop's configuration: not serving",
                  ff->mountdir);
    }
    if (rc != 0)
        g_warning("FUSE %s: serving ended with an error (%d): I/O on the file fails from now on",
                  ff->mountdir, rc);
    else
        g_message("FUSE %s: unmounted; no longer serving the swap device there", ff->mountdir);
    g_mutex_lock(&ff->lock);
    __atomic_store_n(&ff->loop_done, true, __ATOMIC_RELEASE);
    g_cond_broadcast(&ff->done_cond);
    g_mutex_unlock(&ff->lock);
    return NULL;
}

FuseFront *fuse_front_new(Export *e, ServerStats *stats, const char *mountdir, GError **error)
{
    struct stat st;
    if (stat(mountdir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_NOTDIR,
                    "--fuse %s: not a directory (%s): create it first",
                    mountdir, errno ? g_strerror(errno) : "another kind of file");
        return NULL;
    }
    FuseFront *ff = g_new0(FuseFront, 1);
    ff->e = e;
    ff->stats = stats;
    ff->mountdir = g_strdup(mountdir);
    g_mutex_init(&ff->lock);
    g_cond_init(&ff->done_cond);
    fuse_set_log_func(log_from_libfuse);
    char *argv[] = { "nbd-pagesrv", "-o", "fsname=nbd-pagesrv,subtype=swapcopy", NULL };
    struct fuse_args args = FUSE_ARGS_INIT(3, argv);
    ff->se = fuse_session_new(&args, &ops, sizeof ops, ff);
    fuse_opt_free_args(&args);
    if (!ff->se) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                    "--fuse %s: libfuse could not start a session (see the message above)",
                    mountdir);
        goto fail;
    }
    if (fuse_session_mount(ff->se, mountdir) != 0) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                    "--fuse %s: mounting failed (see the message above): is /dev/fuse there "
                    "(modprobe fuse) and are we root?", mountdir);
        goto fail;
    }
    ff->thread = g_thread_try_new("fuse-front", serve, ff, error);
    if (!ff->thread) {
        fuse_session_unmount(ff->se);
        goto fail;
    }
    /* Only now: the stat is one of the requests the thread serves. */
    if (stat(mountdir, &st) == 0)
        ff->dev = st.st_dev;
    else
        g_warning("FUSE %s: stat after mounting: %s: the connection cannot be aborted at exit",
                  mountdir, g_strerror(errno));
    g_message("serving the swap device as %s/%s over FUSE", mountdir, FILE_NAME);
    return ff;

fail:
    if (ff->se)
        fuse_session_destroy(ff->se);
    g_mutex_clear(&ff->lock);
    g_cond_clear(&ff->done_cond);
    g_free(ff->mountdir);
    g_free(ff);
    return NULL;
}

static bool wait_loop_done(FuseFront *ff, gint64 timeout_us)
{
    gint64 end = g_get_monotonic_time() + timeout_us;
    g_mutex_lock(&ff->lock);
    while (!__atomic_load_n(&ff->loop_done, __ATOMIC_ACQUIRE))
        if (!g_cond_wait_until(&ff->done_cond, &ff->lock, end))
            break;
    bool done = __atomic_load_n(&ff->loop_done, __ATOMIC_ACQUIRE);
    g_mutex_unlock(&ff->lock);
    return done;
}

/* Ends the connection as the kernel does when its server dies: pending and
 * later I/O on the file fails, and our blocked readers of /dev/fuse wake. */
static bool abort_connection(FuseFront *ff)
{
    if (!ff->dev)
        return false;
    g_autofree char *path = g_strdup_printf("/sys/fs/fuse/connections/%u/abort",
                                            (unsigned)minor(ff->dev));
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    bool ok = fd >= 0 && write(fd, "1", 1) == 1;
    if (!ok)
        g_warning("FUSE %s: cannot abort the connection through %s (%s): is fusectl mounted "
                  "on /sys/fs/fuse/connections? Exiting without waiting for its threads",
                  ff->mountdir, path, g_strerror(errno));
    if (fd >= 0)
        close(fd);
    return ok;
}

void fuse_front_free(FuseFront *ff)
{
    if (!ff)
        return;
    if (!__atomic_load_n(&ff->loop_done, __ATOMIC_ACQUIRE)) {
        /* Still mounted: teardown-swap.sh unmounts first, so something
         * went another way (a signal before teardown). A lazy unmount ends
         * the connection once nothing holds the file; a loop device that
         * still does is cut off. */
        fuse_session_exit(ff->se);
        if (umount2(ff->mountdir, MNT_DETACH) < 0 && errno != EINVAL)
            g_warning("FUSE %s: umount: %s", ff->mountdir, g_strerror(errno));
        if (!wait_loop_done(ff, G_USEC_PER_SEC / 5)) {
            g_warning("FUSE %s: the file is still in use (a loop device on it?): cutting it "
                      "off; its I/O fails from now on", ff->mountdir);
            if (!abort_connection(ff) || !wait_loop_done(ff, 2 * G_USEC_PER_SEC)) {
                /* Its threads still use the session: leave both to exit(). */
                return;
            }
        }
    }
    g_thread_join(ff->thread);
    fuse_session_unmount(ff->se);
    fuse_session_destroy(ff->se);
    g_mutex_clear(&ff->lock);
    g_cond_clear(&ff->done_cond);
    g_free(ff->mountdir);
    g_free(ff);
}
