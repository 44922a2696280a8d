/* The NBD server: its exports, its connections and its statistics. One
 * Server per process role; everything a connection needs is reached from
 * here, nothing from globals. */
#ifndef SWAPCOPY_SERVER_H
#define SWAPCOPY_SERVER_H

#include <glib.h>
#include <pthread.h>
#include <stdbool.h>

#include "byte-budget.h"
#include "export.h"
#include "server-stats.h"
#include "tls.h"
#include "wire.h"

typedef struct Server Server;

typedef struct Connection {
    Server *server;
    int fd;
    char *peer;                   /* for log messages */
    bool local;                   /* a Unix socket: TLS is never required */
    pthread_t thread;
    Wire wire;

    /* Negotiated in the handshake. */
    bool tls_active;              /* STARTTLS done: the wire has a TLS layer */
    Export *export;
    bool no_zeroes;
    bool structured;
    bool meta_base_allocation;

    /* Replies are written by the reader thread and by worker threads
     * (reads that wait for the source); one reply at a time. */
    GMutex send_lock;
    bool send_failed;             /* atomic: set under send_lock, read anywhere */

    /* Requests handed to workers and not yet answered. */
    GMutex pending_lock;
    GCond pending_cond;
    unsigned pending;
    ByteBudget inflight;          /* their buffers (LIMIT_CONN_INFLIGHT) */

    /* The reader thread's buffer for inline reads and write payloads,
     * taken in pieces: never larger than LIMIT_CONN_BUFFER. */
    unsigned char *buf;
    size_t buf_size;
} Connection;

struct Server {
    ExportSet exports;
    ServerStats stats;
    GThreadPool *blocking_pool;   /* reads that may wait on the source */

    GMutex lock;                  /* protects conns and stopping */
    GPtrArray *conns;             /* of Connection*, live ones */
    GCond conns_cond;
    bool stopping;

    /* Limits (limits.h); set before the first connection. */
    unsigned max_connections;
    int handshake_timeout_s;
    ByteBudget inflight;          /* worker read buffers, all connections */
    /* TLS on the server side: NULL, or the credentials STARTTLS uses;
     * tls_mode says whether TCP clients must use it. */
    TlsServer *tls;
    TlsMode tls_mode;
    uint64_t refused_logged;      /* under lock: refusals logged so far */

    /* A destination sent the completion message (atomic). */
    bool destination_done;
    /* A destination said it is ready for the migration (atomic). */
    bool destination_ready;
};

void server_init(Server *s);
/* A connection's state, not yet served (fd -1: no socket, e.g. a fuzzer's
 * in-memory wire); connection_free also closes fd and ends TLS. */
Connection *connection_new(Server *s, int fd, const char *peer, bool local);
void connection_free(Connection *c);
/* Takes ownership of fd: serves it on a new thread. local: a Unix socket
 * (access checked by its mode and SO_PEERCRED; TLS never required). */
void server_add_connection(Server *s, int fd, const char *peer, bool local);
/* Disconnect every client and wait for their threads to finish. */
void server_shutdown(Server *s);
void server_clear(Server *s);

/* handshake.c: true if the connection entered transmission. */
bool nbd_handshake(Connection *c);
/* transmission.c: serve requests until the client leaves or fails. */
void nbd_transmission(Connection *c);
/* transmission.c: the blocking_pool's job function. */
void nbd_blocking_read_job(gpointer job, gpointer unused);

#endif
