/* Listening sockets (Unix and TCP) whose accepted connections are handed
 * to a Server, driven by the GLib main loop. */
#ifndef SWAPCOPY_LISTENER_H
#define SWAPCOPY_LISTENER_H

#include <glib.h>

#include "server.h"

typedef struct Listener Listener;

/* Returns the fd of a listening Unix socket at path (replacing a stale
 * socket file), or -1 with *error set. */
int listen_unix(const char *path, GError **error);
/* "HOST:PORT", "[V6]:PORT" or ":PORT" (all addresses). */
int listen_tcp(const char *hostport, GError **error);

/* Accept connections on fd for server s; what names the socket in logs. */
Listener *listener_new(Server *s, int fd, const char *what, gboolean is_unix);
void listener_free(Listener *l);

#endif
