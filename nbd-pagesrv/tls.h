/* The server side of TLS (GnuTLS), negotiated with NBD_OPT_STARTTLS as the
 * NBD protocol and nbdkit do it: after the option's ACK, the TLS handshake
 * runs on the connection's socket and the rest of the negotiation and
 * transmission go through the session (a Wire layer). */
#ifndef SWAPCOPY_TLS_H
#define SWAPCOPY_TLS_H

#include <glib.h>
#include <stdbool.h>

#include "tls-config.h"
#include "wire.h"

typedef struct TlsServer TlsServer;

/* Load the credentials cfg names (PSK key file, or the CA, server
 * certificate and key, clients being verified against that CA). NULL with
 * *error naming the file. */
TlsServer *tls_server_new(const TlsConfig *cfg, GError **error);
void tls_server_free(TlsServer *ts);

/* Handshake on w's socket (within w's deadline); on success every later
 * read and write of w goes through the session. False with *error. */
bool tls_server_start(TlsServer *ts, Wire *w, GError **error);

/* Say goodbye (briefly: the peer may be gone) and free w's session, if it
 * has one. */
void tls_session_end(Wire *w);

/* A description of w's session for the log ("TLS1.3, PSK identity alice"). */
char *tls_session_describe(Wire *w);

#endif
