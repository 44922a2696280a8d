#include "source-conn.h"

#include "nbd-proto.h"
#include "tcp-liveness.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

bool source_split_address(const char *hostport, char **host, char **port, GError **error)
{
    const char *colon = hostport ? strrchr(hostport, ':') : NULL;
    if (!colon || colon == hostport || colon[1] == 0) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "--src '%s' is not HOST:PORT (e.g. 192.0.2.1:4444)",
                    hostport ? hostport : "");
        return false;
    }
    const char *h = hostport, *he = colon;
    if (*h == '[' && he[-1] == ']') {
        h++;
        he--;
    }
    *host = g_strndup(h, (gsize)(he - h));
    *port = g_strdup(colon + 1);
    return true;
}

/* libnbd's synchronous calls wait for as long as the peer keeps the
 * connection open, so a process that accepts and never speaks NBD would
 * hang start-up, or a puller thread for good (and with it shutdown).
 * Handshakes run on the asynchronous API against a deadline instead. */
typedef bool (*HandshakeDone)(struct nbd_handle *h, void *arg);

static bool handshake_wait(struct nbd_handle *h, HandshakeDone done, void *arg, gint64 deadline,
                           int timeout_ms, GError **error)
{
    for (;;) {
        if (nbd_aio_is_dead(h) || nbd_aio_is_closed(h)) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                        "the connection closed during the NBD handshake: %s",
                        nbd_get_error() ? nbd_get_error() : "no reason given");
            return false;
        }
        if (done(h, arg))
            return true;
        gint64 left = deadline - g_get_monotonic_time();
        if (left <= 0) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                        "it accepted the connection but did not complete the NBD handshake "
                        "within %.1f s (is that port an NBD server's, and is it alive?)",
                        timeout_ms / 1000.0);
            return false;
        }
        if (nbd_poll(h, (int)MIN(left / 1000 + 1, 1000)) < 0) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "%s", nbd_get_error());
            return false;
        }
    }
}

static bool is_ready(struct nbd_handle *h, void *arg)
{
    (void)arg;
    return nbd_aio_is_ready(h) > 0;
}

static bool is_negotiating(struct nbd_handle *h, void *arg)
{
    (void)arg;
    return nbd_aio_is_negotiating(h) > 0;
}

typedef struct {
    bool completed;
    int err;
} OptOp;

static int opt_done(void *user_data, int *error)
{
    OptOp *op = user_data;
    op->completed = true;
    op->err = *error;
    return 1;
}

static bool opt_completed(struct nbd_handle *h, void *arg)
{
    (void)h;
    return ((OptOp *)arg)->completed;
}

/* Reads in flight on a connection declared dead are sent again on the
 * next one (puller.c). */
static void notice_dead_links(struct nbd_handle *h, const char *host, const char *port)
{
    int fd = nbd_aio_get_fd(h);
    if (fd < 0 || !tcp_notice_dead_peer(fd))
        g_warning("cannot set keepalive and TCP_USER_TIMEOUT on the connection to the source "
                  "%s:%s: %s; a link that dies silently may go unnoticed for minutes", host, port,
                  fd < 0 ? nbd_get_error() : g_strerror(errno));
}

void source_export_free(SourceExport *se)
{
    if (se) {
        g_free(se->identity);
        g_free(se);
    }
}

/* The identity in the export description the handshake brought, or NULL. */
static char *identity_of(struct nbd_handle *h)
{
    g_autofree char *desc = nbd_get_export_description(h);
    if (!desc || !g_str_has_prefix(desc, SWAPCOPY_IDENTITY_PREFIX))
        return NULL;
    return g_strdup(desc + strlen(SWAPCOPY_IDENTITY_PREFIX));
}

/* A libnbd handle set up for the source's TLS; NULL with *error. */
static struct nbd_handle *handle_new(const TlsConfig *tls, GError **error)
{
    struct nbd_handle *h = nbd_create();
    if (!h) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "libnbd: %s", nbd_get_error());
        return NULL;
    }
    if (!tls_config_apply_libnbd(tls, h, error)) {
        nbd_close(h);
        return NULL;
    }
    return h;
}

struct nbd_handle *source_connect(const char *host, const char *port, const TlsConfig *tls,
                                  const char *name, const SourceExport *expect, int timeout_ms,
                                  GError **error)
{
    struct nbd_handle *h = handle_new(tls, error);
    if (!h)
        return NULL;
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    g_autoptr(GError) why = NULL;
    /* Pages are always fully overwritten by the reply: skip libnbd's
     * zeroing of every read buffer. */
    nbd_set_pread_initialize(h, false);
    if (nbd_set_export_name(h, name) < 0 || nbd_set_full_info(h, true) < 0 ||
        nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) < 0 ||
        nbd_aio_connect_tcp(h, host, port) < 0)
        g_set_error(&why, G_FILE_ERROR, G_FILE_ERROR_FAILED, "%s", nbd_get_error());
    else
        handshake_wait(h, is_ready, NULL, deadline, timeout_ms, &why);
    if (why) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                    "cannot connect to the migration source %s:%s (export '%s'): %s; is "
                    "'nbd-pagesrv --export %s=FILE --listen %s:%s' running there?",
                    host, port, name, why->message, name, host, port);
        nbd_close(h);
        return NULL;
    }
    if (expect) {
        int64_t size = nbd_get_size(h);
        g_autofree char *identity = identity_of(h);
        if (size != (int64_t)expect->size ||
            (expect->identity && g_strcmp0(identity, expect->identity) != 0)) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                        "the source %s:%s now serves a different export '%s' (%" G_GINT64_FORMAT
                        " bytes, RAM '%s'; this migration began with %" G_GUINT64_FORMAT
                        " bytes, RAM '%s'): it was restarted with other RAM? Refusing it: no "
                        "page of it can be this guest's", host, port, name, size,
                        identity ? identity : "(not given)", expect->size,
                        expect->identity ? expect->identity : "(not given)");
            nbd_close(h);
            return NULL;
        }
    }
    notice_dead_links(h, host, port);
    return h;
}

static int collect_export(void *user_data, const char *name, const char *description)
{
    (void)description;
    g_ptr_array_add(user_data, g_strdup(name));
    return 0;
}

/* Start an option request and wait for its reply. */
static bool opt_run(struct nbd_handle *h, bool list, GPtrArray *names, gint64 deadline,
                    int timeout_ms, GError **error)
{
    OptOp op = { 0 };
    nbd_completion_callback cb = { .callback = opt_done, .user_data = &op };
    int r = list ? nbd_aio_opt_list(h, (nbd_list_callback){ .callback = collect_export,
                                                            .user_data = names }, cb)
                 : nbd_aio_opt_info(h, cb);
    if (r < 0) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "%s", nbd_get_error());
        return false;
    }
    if (!handshake_wait(h, opt_completed, &op, deadline, timeout_ms, error))
        return false;
    if (op.err) {
        /* A source that requires TLS answers every option but STARTTLS
         * with NBD_REP_ERR_TLS_REQD, which libnbd reports as ENOTSUP. */
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "%s%s", g_strerror(op.err),
                    op.err == ENOTSUP && nbd_get_tls_negotiated(h) != 1
                        ? " (does the source require TLS? give this end the same --tls-psk "
                          "FILE or --tls-certificates DIR)" : "");
        return false;
    }
    return true;
}

GHashTable *source_list_exports(const char *host, const char *port, const TlsConfig *tls,
                                int timeout_ms, GError **error)
{
    GHashTable *sizes = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                              (GDestroyNotify)source_export_free);
    g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    g_autoptr(GError) why = NULL;
    struct nbd_handle *h = handle_new(tls, &why);
    if (!h)
        ;   /* why says it */
    else if (nbd_set_opt_mode(h, true) < 0 || nbd_set_full_info(h, true) < 0 ||
             nbd_aio_connect_tcp(h, host, port) < 0)
        g_set_error(&why, G_FILE_ERROR, G_FILE_ERROR_FAILED, "%s", nbd_get_error());
    else if (handshake_wait(h, is_negotiating, NULL, deadline, timeout_ms, &why))
        opt_run(h, true, names, deadline, timeout_ms, &why);
    if (why) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                    "cannot reach the migration source at %s:%s: %s; start 'nbd-pagesrv "
                    "--export NAME=FILE --listen HOST:%s' on the source host first",
                    host, port, why->message, port);
        goto fail;
    }
    for (guint i = 0; i < names->len; i++) {
        const char *name = g_ptr_array_index(names, i);
        if (nbd_set_export_name(h, name) < 0) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "export name '%s': %s",
                        name, nbd_get_error());
            goto fail;
        }
        if (!opt_run(h, false, NULL, deadline, timeout_ms, &why)) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                        "the source at %s:%s lists export '%s' but will not describe it: %s",
                        host, port, name, why->message);
            goto fail;
        }
        int64_t size = nbd_get_size(h);
        if (size < 0) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                        "size of source export '%s': %s", name, nbd_get_error());
            goto fail;
        }
        SourceExport *se = g_new0(SourceExport, 1);
        se->size = (uint64_t)size;
        se->identity = identity_of(h);
        g_hash_table_insert(sizes, g_strdup(name), se);
    }
    /* Saying goodbye is a courtesy: nothing waits for it. */
    nbd_aio_opt_abort(h);
    nbd_close(h);
    return sizes;
fail:
    if (h)
        nbd_close(h);
    g_hash_table_unref(sizes);
    return NULL;
}

int source_tell(const char *host, const char *port, const TlsConfig *tls, const char *word,
                int timeout_ms, GError **error)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    g_autoptr(GError) why = NULL;
    int result = -1;
    struct nbd_handle *h = handle_new(tls, &why);
    if (!h) {
        ;   /* why says it */
    } else if (nbd_set_opt_mode(h, true) < 0 || nbd_set_export_name(h, word) < 0 ||
               nbd_aio_connect_tcp(h, host, port) < 0) {
        g_set_error(&why, G_FILE_ERROR, G_FILE_ERROR_FAILED, "%s", nbd_get_error());
    } else if (handshake_wait(h, is_negotiating, NULL, deadline, timeout_ms, &why)) {
        OptOp op = { 0 };
        if (nbd_aio_opt_info(h, (nbd_completion_callback){ .callback = opt_done,
                                                           .user_data = &op }) < 0)
            g_set_error(&why, G_FILE_ERROR, G_FILE_ERROR_FAILED, "%s", nbd_get_error());
        else if (handshake_wait(h, opt_completed, &op, deadline, timeout_ms, &why))
            result = op.err ? 0 : 1;   /* an answer either way: delivered or not understood */
    }
    if (result >= 0)
        nbd_aio_opt_abort(h);
    if (h)
        nbd_close(h);
    if (result < 0)
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "cannot tell the source %s:%s "
                    "'%s': %s", host, port, word, why->message);
    return result;
}

int source_poll(struct nbd_handle *h, int wake_fd, int timeout_ms)
{
    unsigned dir = nbd_aio_get_direction(h);
    struct pollfd fds[2] = {
        { .fd = nbd_aio_get_fd(h), .events = 0 },
        { .fd = wake_fd, .events = POLLIN },
    };
    if (fds[0].fd < 0)
        return -1;
    if (dir & LIBNBD_AIO_DIRECTION_READ)
        fds[0].events |= POLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE)
        fds[0].events |= POLLOUT;
    int n = poll(fds, 2, timeout_ms);
    if (n < 0 && errno != EINTR)
        return -1;
    if (n <= 0)
        return 0;
    if (fds[1].revents & POLLIN)
        wake_fd_drain(wake_fd);
    /* HUP/ERR: let libnbd read and discover the end itself. */
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
        if (nbd_aio_notify_read(h) < 0)
            return -1;
    } else if (fds[0].revents & POLLOUT) {
        if (nbd_aio_notify_write(h) < 0)
            return -1;
    }
    return nbd_aio_is_dead(h) || nbd_aio_is_closed(h) ? -1 : 0;
}

bool source_error_is_connection(int err)
{
    switch (err) {
    case ENOTCONN: case ESHUTDOWN: case ECONNRESET: case EPIPE: case ECONNREFUSED:
    case ETIMEDOUT: case EHOSTUNREACH: case ENETUNREACH: case ECONNABORTED:
        return true;
    default:
        return false;
    }
}

void wake_fd_signal(int fd)
{
    uint64_t one = 1;
    /* A full counter already means "wake up". */
    if (write(fd, &one, sizeof one) < 0 && errno != EAGAIN)
        g_warning("waking a source thread failed: %s", g_strerror(errno));
}

void wake_fd_drain(int fd)
{
    uint64_t v;
    while (read(fd, &v, sizeof v) > 0)
        ;
}
