/* Client connections to the migration source, through libnbd: connecting
 * with a clear error, and a poll loop that also wakes on an eventfd so a
 * thread driving libnbd's asynchronous API can take new work at once. */
#ifndef SWAPCOPY_SOURCE_CONN_H
#define SWAPCOPY_SOURCE_CONN_H

#include <glib.h>
#include <libnbd.h>
#include <stdbool.h>
#include <stdint.h>

#include "tls-config.h"

/* What a source says about one of its exports. */
typedef struct {
    uint64_t size;
    char *identity;                /* what its RAM is (export.h); NULL: not said */
} SourceExport;
void source_export_free(SourceExport *se);

/* Every function here connects with the TLS settings tls (NULL or mode
 * off: plaintext), through libnbd.
 *
 * Connect to export `name` at host:port; asks for base:allocation. A
 * handshake not done within timeout_ms fails. If `expect` is given, the
 * export must have its size and (if it had one) identity: a source that
 * restarted with other RAM is refused, since its pages are not ours.
 * Returns NULL with *error set. */
struct nbd_handle *source_connect(const char *host, const char *port, const TlsConfig *tls,
                                  const char *name, const SourceExport *expect, int timeout_ms,
                                  GError **error);

/* List the source's exports: name -> SourceExport*. The whole exchange
 * must be done within timeout_ms. */
GHashTable *source_list_exports(const char *host, const char *port, const TlsConfig *tls,
                                int timeout_ms, GError **error);

/* Give the source one of swapcopy's words (nbd-proto.h), over TLS if tls
 * says so: word is SWAPCOPY_DONE_EXPORT (this destination has every page,
 * or its swap device is gone) or SWAPCOPY_READY_EXPORT (ready for the
 * migration). 1: the source noted it; 0: the source does not know the word
 * (not an nbd-pagesrv); -1 with *error: not delivered (retry). */
int source_tell(const char *host, const char *port, const TlsConfig *tls, const char *word,
                int timeout_ms, GError **error);

/* Wait up to timeout_ms for the handle (or the wake eventfd) and let libnbd
 * make progress. Returns 0, or -1 if the connection is dead. */
int source_poll(struct nbd_handle *h, int wake_fd, int timeout_ms);

/* True if err (from a libnbd completion) means the connection, not the
 * source's answer, failed: the request should be retried elsewhere. */
bool source_error_is_connection(int err);

/* Split "HOST:PORT" ("[V6]:PORT") into its parts. */
bool source_split_address(const char *hostport, char **host, char **port, GError **error);

void wake_fd_signal(int fd);
void wake_fd_drain(int fd);

#endif
