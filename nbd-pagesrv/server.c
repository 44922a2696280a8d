/* Connection lifecycle: one thread per client connection (the kernel's nbd
 * client and nbdfuse keep several connections with many requests each). */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "limits.h"
#include "server.h"

#define CONN_STACK_SIZE (256 * 1024)   /* small: the daemon mlocks its memory */
#define BLOCKING_WORKERS 64

void server_init(Server *s)
{
    memset(s, 0, sizeof *s);
    export_set_init(&s->exports);
    server_stats_reset(&s->stats);
    g_mutex_init(&s->lock);
    g_cond_init(&s->conns_cond);
    s->conns = g_ptr_array_new();
    s->max_connections = LIMIT_CONNECTIONS_DEFAULT;
    s->handshake_timeout_s = LIMIT_HANDSHAKE_SECONDS;
    byte_budget_init(&s->inflight, LIMIT_SERVER_INFLIGHT);
    s->blocking_pool = g_thread_pool_new(nbd_blocking_read_job, NULL, BLOCKING_WORKERS, FALSE, NULL);
}

Connection *connection_new(Server *s, int fd, const char *peer, bool local)
{
    Connection *c = g_new0(Connection, 1);
    c->server = s;
    c->fd = fd;
    c->local = local;
    c->peer = g_strdup(peer);
    wire_init(&c->wire, fd);
    g_mutex_init(&c->send_lock);
    g_mutex_init(&c->pending_lock);
    g_cond_init(&c->pending_cond);
    byte_budget_init(&c->inflight, LIMIT_CONN_INFLIGHT);
    return c;
}

void connection_free(Connection *c)
{
    tls_session_end(&c->wire);
    if (c->fd >= 0 && close(c->fd) < 0)
        g_debug("%s: closing the connection's socket: %s", c->peer, g_strerror(errno));
    wire_clear(&c->wire);
    byte_budget_clear(&c->inflight);
    g_free(c->peer);
    g_free(c->buf);
    g_mutex_clear(&c->send_lock);
    g_mutex_clear(&c->pending_lock);
    g_cond_clear(&c->pending_cond);
    g_free(c);
}

static void *connection_main(void *arg)
{
    Connection *c = arg;
    Server *s = c->server;
    g_debug("%s: connected", c->peer);
    if (nbd_handshake(c)) {
        g_autofree char *how = tls_session_describe(&c->wire);
        g_debug("%s: serving export '%s'%s (%s)", c->peer, c->export->name,
                c->structured ? " with structured replies" : "", how);
        nbd_transmission(c);
    } else {
        stat_inc(&s->stats.handshakes_failed, 1);
    }
    g_debug("%s: disconnected", c->peer);
    g_mutex_lock(&s->lock);
    g_ptr_array_remove_fast(s->conns, c);
    stat_inc(&s->stats.connections_current, -1);
    g_cond_broadcast(&s->conns_cond);
    g_mutex_unlock(&s->lock);
    connection_free(c);
    return NULL;
}

void server_add_connection(Server *s, int fd, const char *peer, bool local)
{
    Connection *c = connection_new(s, fd, peer, local);

    g_mutex_lock(&s->lock);
    if (s->stopping) {
        g_mutex_unlock(&s->lock);
        connection_free(c);
        return;
    }
    if (s->conns->len >= s->max_connections) {
        /* Each connection costs a thread and its buffers: past the cap a
         * flood of connections is closed at once. Logged sparingly, since
         * a flood would flood the log too. */
        uint64_t n = ++s->refused_logged;
        g_mutex_unlock(&s->lock);
        stat_inc(&s->stats.connections_refused, 1);
        if (n <= 3 || n % 1000 == 0)
            g_warning("refusing the connection from %s: %u connections are open, the most "
                      "allowed (--max-connections); %" G_GUINT64_FORMAT " refused so far",
                      peer, s->max_connections, n);
        connection_free(c);
        return;
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, CONN_STACK_SIZE);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int err = pthread_create(&c->thread, &attr, connection_main, c);
    pthread_attr_destroy(&attr);
    if (err) {
        g_mutex_unlock(&s->lock);
        g_warning("cannot start a thread for the connection from %s: %s; dropping it "
                  "(is the process out of memory or threads?)", peer, g_strerror(err));
        connection_free(c);
        return;
    }
    g_ptr_array_add(s->conns, c);
    stat_inc(&s->stats.connections_current, 1);
    stat_inc(&s->stats.connections_total, 1);
    g_mutex_unlock(&s->lock);
}

void server_shutdown(Server *s)
{
    g_mutex_lock(&s->lock);
    s->stopping = true;
    /* Readers waiting for buffer space give up. */
    byte_budget_stop(&s->inflight);
    /* Wake every reader; each thread then unregisters itself. */
    for (guint i = 0; i < s->conns->len; i++)
        shutdown(((Connection *)g_ptr_array_index(s->conns, i))->fd, SHUT_RDWR);
    while (s->conns->len > 0)
        g_cond_wait(&s->conns_cond, &s->lock);
    g_mutex_unlock(&s->lock);
}

void server_clear(Server *s)
{
    if (s->blocking_pool)
        g_thread_pool_free(s->blocking_pool, TRUE, TRUE);
    s->blocking_pool = NULL;
    export_set_clear(&s->exports);
    tls_server_free(s->tls);
    s->tls = NULL;
    if (s->conns)
        g_ptr_array_unref(s->conns);
    s->conns = NULL;
    g_mutex_clear(&s->lock);
    g_cond_clear(&s->conns_cond);
    byte_budget_clear(&s->inflight);
}
