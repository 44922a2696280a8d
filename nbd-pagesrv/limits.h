/* What one NBD peer may make nbd-pagesrv spend. A source listens on the
 * network; whoever reaches its port (before TLS is negotiated, or with no
 * TLS at all) must not be able to make it allocate more than these
 * bounds, nor hold a connection slot for ever without completing a
 * handshake. The memory that does scale with a peer's numbers is capped
 * per connection and for the whole server; docs/security.md has the
 * arithmetic. */
#ifndef SWAPCOPY_LIMITS_H
#define SWAPCOPY_LIMITS_H

#include <stdint.h>

/* Connections served at once (--max-connections). A destination opens one
 * demand and four stream connections per source export, plus short ones to
 * list exports and say it is done; 128 leaves room for two destinations
 * pulling a dozen RAM blocks each. Others are closed at accept. */
#define LIMIT_CONNECTIONS_DEFAULT 128u

/* A handshake (greeting to NBD_OPT_GO, TLS included) must be over within
 * this time, or the connection is closed: a peer that connects and says
 * nothing cannot keep a slot. libnbd needs milliseconds. */
#define LIMIT_HANDSHAKE_SECONDS 30

/* Options one handshake may send. Listing a source's exports costs one
 * NBD_OPT_INFO per export on one connection, so the cap grows with the
 * number of exports. */
#define LIMIT_OPTIONS_BASE 64u
#define LIMIT_OPTIONS_PER_EXPORT 2u

/* A request's payload must keep arriving: no byte for this long and the
 * connection is closed (a peer that announces 32 MiB and stops). */
#define LIMIT_PAYLOAD_STALL_MS (60 * 1000)

/* Inline READs and every WRITE payload go through one buffer per
 * connection of at most this size, in pieces: a 32 MiB request costs the
 * server no more than a 1 MiB one. It is kept between requests (the
 * destination's reads are 4 KiB - 1 MiB) and never grows past this. */
#define LIMIT_CONN_BUFFER (1u << 20)

/* READs that wait for the migration source are served whole by a worker
 * (a simple reply cannot report an error half-way): their buffers are
 * capped per connection (the reader stops taking requests until replies
 * drain) and for the whole server. */
#define LIMIT_CONN_INFLIGHT (64ull << 20)
#define LIMIT_SERVER_INFLIGHT (128ull << 20)

/* Allocations of at least this size come from mmap and go back to the
 * system when freed (mallopt M_MMAP_THRESHOLD; fixed, since glibc would
 * otherwise raise it after the first large free and keep later ones in its
 * heap): the up-to-32 MiB buffers a peer's numbers size. It must stay above
 * every buffer of the migration's hot path (1 MiB demand runs and worker
 * reads, 256 KiB stream chunks): below it, each of those buffers was a
 * fresh mapping, faulted in page by page (the daemon mlocks on fault) and
 * unmapped again, which made the destination's whole pull about 1.5 times
 * slower (docs/performance.md, "Update 2026-12-06, evening"). */
#define LIMIT_MMAP_THRESHOLD (4u << 20)

#endif
