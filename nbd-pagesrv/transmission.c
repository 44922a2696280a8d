/* The transmission phase (proto.md, "Transmission"): read a request, check
 * it (validate_request), carry it out (handle_request), answer. Requests
 * are served in order on the connection's own thread, except reads that
 * may wait for the migration source: those go to a worker so that later
 * requests on the same connection are not held up behind them.
 *
 * A request is checked before any of its payload is read, and what a
 * peer's numbers make us hold is bounded (limits.h): payloads and inline
 * reads pass through the connection's buffer in pieces of at most
 * LIMIT_CONN_BUFFER; a refused payload is skipped through the wire's small
 * buffer; a worker's whole-read buffer counts against the connection's and
 * the server's in-flight budgets. */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "limits.h"
#include "nbd-proto.h"
#include "server.h"
#include "tsan-annotate.h"

#define MAX_EXTENTS 65536   /* per BLOCK_STATUS reply; the client asks again */

typedef struct {
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset;
    uint32_t length;
    gint64 start_us;
} Request;

typedef struct {
    Connection *conn;
    Request req;
} ReadJob;

static const char *cmd_name(uint16_t type)
{
    static const char *const names[NBD_CMD_COUNT] = {
        "NBD_CMD_READ", "NBD_CMD_WRITE", "NBD_CMD_DISC", "NBD_CMD_FLUSH",
        "NBD_CMD_TRIM", "NBD_CMD_CACHE", "NBD_CMD_WRITE_ZEROES", "NBD_CMD_BLOCK_STATUS",
    };
    return type < NBD_CMD_COUNT ? names[type] : "unknown command";
}

/* The one place host errnos become NBD error codes. */
static uint32_t nbd_error_of(int err)
{
    switch (err) {
    case 0: return 0;
    case EPERM: case EROFS: return NBD_EPERM;
    case ENOMEM: return NBD_ENOMEM;
    case EINVAL: return NBD_EINVAL;
    case ENOSPC: case EFBIG: case EDQUOT: return NBD_ENOSPC;
    case EOVERFLOW: return NBD_EOVERFLOW;
    case ENOTSUP: return NBD_ENOTSUP;
    case ESHUTDOWN: return NBD_ESHUTDOWN;
    default: return NBD_EIO;
    }
}

static void account(Connection *c, const Request *r, uint32_t nbd_err)
{
    server_stats_request(&c->server->stats, r->type, nbd_err, r->length,
                         (uint64_t)(g_get_monotonic_time() - r->start_us));
}

static bool send_failed(Connection *c)
{
    return __atomic_load_n(&c->send_failed, __ATOMIC_ACQUIRE);
}

/* The connection is of no further use: wake the reader so that it ends. */
static void fail_connection(Connection *c)
{
    __atomic_store_n(&c->send_failed, true, __ATOMIC_RELEASE);
    shutdown(c->fd, SHUT_RDWR);
}

/* Caller holds send_lock: one reply's pieces go out together. */
static bool send_iov_locked(Connection *c, struct iovec *iov, int n)
{
    if (send_failed(c))
        return false;
    if (wire_writev(&c->wire, iov, n) < 0) {
        g_debug("%s: sending a reply failed: %s; the client is gone", c->peer, g_strerror(errno));
        fail_connection(c);
        return false;
    }
    return true;
}

static void send_iov(Connection *c, struct iovec *iov, int n)
{
    g_mutex_lock(&c->send_lock);
    send_iov_locked(c, iov, n);
    g_mutex_unlock(&c->send_lock);
}

static void send_simple(Connection *c, const Request *r, uint32_t nbd_err, const void *data,
                        uint32_t len)
{
    unsigned char hdr[NBD_SIMPLE_REPLY_SIZE];
    put_be32(hdr, NBD_SIMPLE_REPLY_MAGIC);
    put_be32(hdr + 4, nbd_err);
    put_be64(hdr + 8, r->cookie);
    struct iovec iov[2] = { { hdr, sizeof hdr }, { (void *)data, len } };
    send_iov(c, iov, data && len ? 2 : 1);
}

static void chunk_header(unsigned char *hdr, const Request *r, uint16_t flags, uint16_t type,
                         uint32_t len)
{
    put_be32(hdr, NBD_STRUCTURED_REPLY_MAGIC);
    put_be16(hdr + 4, flags);
    put_be16(hdr + 6, type);
    put_be64(hdr + 8, r->cookie);
    put_be32(hdr + 16, len);
}

/* Answer r with an error (nbd_err != 0) or plain success. Reads and block
 * status need a structured error chunk once structured replies are on. */
static void reply_status(Connection *c, const Request *r, uint32_t nbd_err, const char *why)
{
    if (nbd_err && c->structured &&
        (r->type == NBD_CMD_READ || r->type == NBD_CMD_BLOCK_STATUS)) {
        size_t mlen = why ? MIN(strlen(why), (size_t)NBD_MAX_STRING) : 0;
        unsigned char hdr[NBD_CHUNK_HEADER_SIZE], body[6];
        chunk_header(hdr, r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, (uint32_t)(6 + mlen));
        put_be32(body, nbd_err);
        put_be16(body + 4, (uint16_t)mlen);
        struct iovec iov[3] = { { hdr, sizeof hdr }, { body, sizeof body }, { (void *)why, mlen } };
        send_iov(c, iov, mlen ? 3 : 2);
    } else {
        send_simple(c, r, nbd_err, NULL, 0);
    }
    account(c, r, nbd_err);
}

static void reply_read_data(Connection *c, const Request *r, const void *data)
{
    if (c->structured) {
        unsigned char hdr[NBD_CHUNK_HEADER_SIZE], off[8];
        chunk_header(hdr, r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, 8 + r->length);
        put_be64(off, r->offset);
        struct iovec iov[3] = { { hdr, sizeof hdr }, { off, sizeof off },
                                { (void *)data, r->length } };
        send_iov(c, iov, 3);
    } else {
        send_simple(c, r, 0, data, r->length);
    }
    account(c, r, 0);
}

static void reply_block_status(Connection *c, const Request *r, GArray *ext)
{
    guint n = MIN(ext->len, (guint)MAX_EXTENTS);
    if (r->flags & NBD_CMD_FLAG_REQ_ONE)
        n = MIN(n, 1u);
    g_autofree unsigned char *body = g_malloc(4 + 8 * (size_t)n);
    put_be32(body, NBD_META_ID_BASE_ALLOCATION);
    for (guint i = 0; i < n; i++) {
        Extent *x = &g_array_index(ext, Extent, i);
        put_be32(body + 4 + 8 * i, x->length);
        put_be32(body + 8 + 8 * i, x->flags);
    }
    unsigned char hdr[NBD_CHUNK_HEADER_SIZE];
    chunk_header(hdr, r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, 4 + 8 * n);
    struct iovec iov[2] = { { hdr, sizeof hdr }, { body, 4 + 8 * (size_t)n } };
    send_iov(c, iov, 2);
    account(c, r, 0);
}

/* FUA is allowed on every command (proto.md: clients are known to set it
 * on others, and the server must accept it, if only by ignoring it). */
static uint16_t allowed_flags(const Connection *c, uint16_t type)
{
    switch (type) {
    case NBD_CMD_READ:
        return NBD_CMD_FLAG_FUA | (c->structured ? NBD_CMD_FLAG_DF : 0);
    case NBD_CMD_WRITE_ZEROES:
        return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
    case NBD_CMD_BLOCK_STATUS:
        return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE;
    default:
        return NBD_CMD_FLAG_FUA;
    }
}

/* Returns 0 if r may be carried out, else the NBD error to answer with;
 * *why says why, for the log and for structured error messages. */
static uint32_t validate_request(const Connection *c, const Request *r, const char **why)
{
    const Export *e = c->export;
    if (r->type >= NBD_CMD_COUNT) {
        *why = "unknown command";
        return NBD_EINVAL;
    }
    if (r->flags & ~allowed_flags(c, r->type)) {
        *why = "unknown or unsupported command flags";
        return NBD_EINVAL;
    }
    switch (r->type) {
    case NBD_CMD_DISC:
        return 0;   /* offset and length are meaningless; never answered */
    case NBD_CMD_FLUSH:
        if (r->offset || r->length) {
            *why = "NBD_CMD_FLUSH must have offset and length 0";
            return NBD_EINVAL;
        }
        return 0;
    case NBD_CMD_WRITE:
    case NBD_CMD_TRIM:
    case NBD_CMD_WRITE_ZEROES:
        if (e->read_only) {
            *why = "the export is read-only";
            return NBD_EPERM;
        }
        break;
    case NBD_CMD_BLOCK_STATUS:
        if (!c->meta_base_allocation) {
            *why = "NBD_CMD_BLOCK_STATUS without a negotiated meta context";
            return NBD_EINVAL;
        }
        break;
    default:
        break;
    }
    if (r->length == 0) {
        *why = "length is 0";
        return NBD_EINVAL;
    }
    if ((r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE) && r->length > NBD_MAX_REQUEST) {
        *why = "length is larger than the 32 MiB maximum block size";
        return NBD_EINVAL;
    }
    if (r->offset > e->size || r->length > e->size - r->offset) {
        *why = "offset and length run past the end of the export";
        return r->type == NBD_CMD_WRITE || r->type == NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC
                                                                           : NBD_EINVAL;
    }
    return 0;
}

static void log_rejected(const Connection *c, const Request *r, uint32_t err, const char *why)
{
    g_debug("%s: invalid request: %s: %s: offset=%" G_GUINT64_FORMAT " length=%u flags=0x%x "
            "(answered error %u)", c->peer, cmd_name(r->type), why, r->offset, r->length,
            r->flags, err);
}

static void do_read(Connection *c, const Request *r, unsigned char *buf)
{
    int err = c->export->ops->pread(c->export, buf, r->length, r->offset);
    if (err) {
        g_warning("%s: NBD_CMD_READ offset=%" G_GUINT64_FORMAT " length=%u failed: %s",
                  c->peer, r->offset, r->length, g_strerror(err));
        reply_status(c, r, nbd_error_of(err), g_strerror(err));
    } else {
        reply_read_data(c, r, buf);
    }
}

/* Worker: a read that may wait for the source, served whole (a simple
 * reply cannot report an error once its data has begun). The reader took
 * its length from both in-flight budgets (queue_blocking_read). */
void nbd_blocking_read_job(gpointer data, gpointer user_data)
{
    (void)user_data;
    ReadJob *job = data;
    TSAN_ACQUIRE(job);   /* handed over through the pool's queue */
    Connection *c = job->conn;
    g_autofree unsigned char *buf = g_try_malloc(job->req.length);
    if (buf) {
        do_read(c, &job->req, buf);
    } else {
        g_warning("%s: out of memory for a %u-byte NBD_CMD_READ buffer: answering ENOMEM",
                  c->peer, job->req.length);
        reply_status(c, &job->req, NBD_ENOMEM, "out of memory");
    }
    g_clear_pointer(&buf, g_free);
    byte_budget_release(&c->server->inflight, job->req.length);
    byte_budget_release(&c->inflight, job->req.length);
    g_free(job);
    g_mutex_lock(&c->pending_lock);
    c->pending--;
    g_cond_broadcast(&c->pending_cond);
    g_mutex_unlock(&c->pending_lock);
}

static void queue_blocking_read(Connection *c, const Request *r)
{
    /* The reader stops taking requests while this connection's, or every
     * connection's, worker buffers are at their cap: replies drain first. */
    if (!byte_budget_acquire(&c->inflight, r->length))
        g_assert_not_reached();   /* only the server's budget is ever stopped */
    if (!byte_budget_acquire(&c->server->inflight, r->length)) {
        byte_budget_release(&c->inflight, r->length);
        reply_status(c, r, NBD_ESHUTDOWN, "the server is shutting down");
        return;
    }
    ReadJob *job = g_new(ReadJob, 1);
    *job = (ReadJob){ c, *r };
    g_mutex_lock(&c->pending_lock);
    c->pending++;
    g_mutex_unlock(&c->pending_lock);
    TSAN_RELEASE(job);
    g_thread_pool_push(c->server->blocking_pool, job, NULL);
}

static void wait_pending(Connection *c)
{
    g_mutex_lock(&c->pending_lock);
    while (c->pending > 0)
        g_cond_wait(&c->pending_cond, &c->pending_lock);
    g_mutex_unlock(&c->pending_lock);
}

/* The reader thread's buffer, for a piece of up to LIMIT_CONN_BUFFER
 * bytes; kept between requests (it never grows past that). NULL when
 * memory is short. */
static unsigned char *conn_buffer(Connection *c, size_t len)
{
    g_assert(len <= LIMIT_CONN_BUFFER);
    if (c->buf_size < len) {
        g_free(c->buf);
        c->buf = g_try_malloc(len);
        c->buf_size = c->buf ? len : 0;
    }
    return c->buf;
}

/* A READ the export answers from memory or a local file, on the reader
 * thread, LIMIT_CONN_BUFFER at a time. Structured replies carry one data
 * chunk per piece (and an error chunk if a later piece fails); a simple
 * reply reads its first piece before the header, so only a failure past
 * 1 MiB of a larger read cannot be reported and closes the connection. */
static void serve_read_inline(Connection *c, const Request *r)
{
    uint32_t piece = MIN(r->length, LIMIT_CONN_BUFFER);
    unsigned char *buf = conn_buffer(c, piece);
    if (!buf) {
        g_warning("%s: out of memory for a %u-byte read buffer: answering ENOMEM", c->peer,
                  piece);
        reply_status(c, r, NBD_ENOMEM, "out of memory");
        return;
    }
    if (piece == r->length) {
        do_read(c, r, buf);
        return;
    }
    int err = c->export->ops->pread(c->export, buf, piece, r->offset);
    if (err) {
        g_warning("%s: NBD_CMD_READ offset=%" G_GUINT64_FORMAT " length=%u failed: %s",
                  c->peer, r->offset, r->length, g_strerror(err));
        reply_status(c, r, nbd_error_of(err), g_strerror(err));
        return;
    }
    g_mutex_lock(&c->send_lock);
    bool ok = true;
    uint32_t done = 0;
    if (!c->structured) {
        unsigned char hdr[NBD_SIMPLE_REPLY_SIZE];
        put_be32(hdr, NBD_SIMPLE_REPLY_MAGIC);
        put_be32(hdr + 4, 0);
        put_be64(hdr + 8, r->cookie);
        struct iovec iov[1] = { { hdr, sizeof hdr } };
        ok = send_iov_locked(c, iov, 1);
    }
    while (ok) {
        uint64_t off = r->offset + done;
        bool last = done + piece == r->length;
        if (c->structured) {
            unsigned char hdr[NBD_CHUNK_HEADER_SIZE], offb[8];
            chunk_header(hdr, r, last ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_OFFSET_DATA,
                         8 + piece);
            put_be64(offb, off);
            struct iovec iov[3] = { { hdr, sizeof hdr }, { offb, sizeof offb }, { buf, piece } };
            ok = send_iov_locked(c, iov, 3);
        } else {
            struct iovec iov[1] = { { buf, piece } };
            ok = send_iov_locked(c, iov, 1);
        }
        done += piece;
        if (!ok || last)
            break;
        piece = MIN(r->length - done, LIMIT_CONN_BUFFER);
        err = c->export->ops->pread(c->export, buf, piece, r->offset + done);
        if (err) {
            g_warning("%s: NBD_CMD_READ offset=%" G_GUINT64_FORMAT " length=%u failed %u bytes "
                      "in: %s%s", c->peer, r->offset, r->length, done, g_strerror(err),
                      c->structured ? "" : "; a simple reply cannot say so after its data began: "
                                           "closing the connection");
            if (c->structured) {
                const char *why = g_strerror(err);
                size_t mlen = MIN(strlen(why), (size_t)NBD_MAX_STRING);
                unsigned char hdr[NBD_CHUNK_HEADER_SIZE], body[6];
                chunk_header(hdr, r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR,
                             (uint32_t)(6 + mlen));
                put_be32(body, nbd_error_of(err));
                put_be16(body + 4, (uint16_t)mlen);
                struct iovec iov[3] = { { hdr, sizeof hdr }, { body, sizeof body },
                                        { (void *)why, mlen } };
                send_iov_locked(c, iov, 3);
            } else {
                fail_connection(c);
            }
            break;
        }
    }
    g_mutex_unlock(&c->send_lock);
    account(c, r, ok && done == r->length ? 0 : NBD_EIO);
}

/* A WRITE validate_request() accepted: its payload is read and written
 * LIMIT_CONN_BUFFER at a time (NBD promises no atomicity for a write).
 * After a failure the rest is skipped and the first error answered. False
 * if the connection is lost. */
static bool serve_write(Connection *c, const Request *r)
{
    Export *e = c->export;
    int err = 0;
    unsigned char *buf = conn_buffer(c, MIN(r->length, LIMIT_CONN_BUFFER));
    if (!buf) {
        g_warning("%s: out of memory for a write buffer: answering ENOMEM", c->peer);
        err = ENOMEM;
    }
    /* A payload that stops arriving must not hold the connection. */
    c->wire.stall_ms = LIMIT_PAYLOAD_STALL_MS;
    uint32_t done = 0;
    while (done < r->length) {
        uint32_t piece = MIN(r->length - done, LIMIT_CONN_BUFFER);
        int rc = err ? wire_skip(&c->wire, r->length - done)
                     : wire_read(&c->wire, buf, piece);
        if (rc < 0) {
            g_message("%s: connection lost inside a %u-byte write payload (%u bytes in): %s",
                      c->peer, r->length, done, g_strerror(errno ? errno : ECONNRESET));
            c->wire.stall_ms = 0;
            return false;
        }
        if (err)
            break;
        err = e->ops->pwrite(e, buf, piece, r->offset + done);
        done += piece;
    }
    c->wire.stall_ms = 0;
    if (err)
        g_warning("%s: NBD_CMD_WRITE offset=%" G_GUINT64_FORMAT " length=%u failed: %s",
                  c->peer, r->offset, r->length, g_strerror(err));
    reply_status(c, r, nbd_error_of(err), err ? g_strerror(err) : NULL);
    return true;
}

/* Carry out a request validate_request() accepted. */
static void handle_request(Connection *c, const Request *r)
{
    Export *e = c->export;
    int err = 0;
    switch (r->type) {
    case NBD_CMD_READ:
        if (e->ops->read_may_block && e->ops->read_may_block(e, r->length, r->offset))
            queue_blocking_read(c, r);
        else
            serve_read_inline(c, r);
        return;
    case NBD_CMD_FLUSH:
        err = e->ops->flush(e);
        break;
    case NBD_CMD_TRIM:
        err = e->ops->trim(e, r->length, r->offset);
        break;
    case NBD_CMD_WRITE_ZEROES:
        err = e->ops->zero(e, r->length, r->offset);
        break;
    case NBD_CMD_CACHE:
        err = e->ops->cache ? e->ops->cache(e, r->length, r->offset) : 0;
        break;
    case NBD_CMD_BLOCK_STATUS: {
        g_autoptr(GArray) ext = g_array_new(FALSE, FALSE, sizeof(Extent));
        err = e->ops->block_status(e, r->length, r->offset, ext);
        if (!err && ext->len > 0) {
            reply_block_status(c, r, ext);
            return;
        }
        if (!err)
            err = EIO;
        break;
    }
    default:
        g_assert_not_reached();   /* validate_request() rejects the rest */
    }
    if (err)
        g_warning("%s: %s offset=%" G_GUINT64_FORMAT " length=%u failed: %s", c->peer,
                  cmd_name(r->type), r->offset, r->length, g_strerror(err));
    reply_status(c, r, nbd_error_of(err), err ? g_strerror(err) : NULL);
}

void nbd_transmission(Connection *c)
{
    for (;;) {
        unsigned char hdr[NBD_REQUEST_SIZE];
        if (wire_read(&c->wire, hdr, sizeof hdr) < 0) {
            if (errno && !send_failed(c))
                g_message("%s: connection lost: %s", c->peer, g_strerror(errno));
            break;
        }
        Request r = {
            .flags = get_be16(hdr + 4),
            .type = get_be16(hdr + 6),
            .cookie = get_be64(hdr + 8),
            .offset = get_be64(hdr + 16),
            .length = get_be32(hdr + 24),
            .start_us = g_get_monotonic_time(),
        };
        if (get_be32(hdr) != NBD_REQUEST_MAGIC) {
            g_message("%s: bad request magic 0x%08x; closing the connection", c->peer,
                      get_be32(hdr));
            break;
        }
        /* Checked before a byte of its payload is read: a refused WRITE's
         * payload is skipped, never buffered. */
        const char *why = NULL;
        uint32_t err = validate_request(c, &r, &why);
        if (err) {
            log_rejected(c, &r, err, why);
            if (r.type == NBD_CMD_WRITE) {
                c->wire.stall_ms = LIMIT_PAYLOAD_STALL_MS;
                int rc = wire_skip(&c->wire, r.length);
                c->wire.stall_ms = 0;
                if (rc < 0) {
                    g_message("%s: connection lost inside a refused %u-byte write payload: %s",
                              c->peer, r.length, g_strerror(errno ? errno : ECONNRESET));
                    break;
                }
            }
            reply_status(c, &r, err, why);
            if (send_failed(c))
                break;
            continue;
        }
        if (r.type == NBD_CMD_DISC) {
            account(c, &r, 0);
            break;
        }
        if (r.type == NBD_CMD_WRITE) {
            if (!serve_write(c, &r))
                break;
        } else {
            handle_request(c, &r);
        }
        if (send_failed(c))
            break;
    }
    /* Workers hold c; they finish (their replies may fail) before c goes. */
    wait_pending(c);
}
