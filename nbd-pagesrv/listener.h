/* Listening sockets (Unix and TCP) whose accepted connections are handed
 * to a Server, driven by the GLib main loop. */
#ifndef SWAPCOPY_LISTENER_H
#define SWAPCOPY_LISTENER_H

#include <glib.h>
#include <stdbool.h>

#include "server.h"

typedef struct Listener Listener;

/* Returns the fd of a listening Unix socket at path (replacing a stale
 * socket file), or -1 with *error set. The socket file is 0600; a missing
 * directory is created 0700. */
int listen_unix(const char *path, GError **error);
/* "HOST:PORT", "[V6]:PORT" or ":PORT" (all addresses). */
int listen_tcp(const char *hostport, GError **error);

/* True if the peer of Unix socket fd is root or this process's effective
 * user; *who describes it (uid, pid) for a log message. */
bool unix_peer_trusted(int fd, char *who, size_t who_size);

/* Accept connections on fd for server s; what names the socket in logs. */
Listener *listener_new(Server *s, int fd, const char *what, gboolean is_unix);
void listener_free(Listener *l);

#endif
