/* State shared by dest.c (the destination role: mapping, demand faults,
 * control commands) and puller.c (the threads that talk to the source).
 * Everything lives in one Dest; nothing is global. */
#ifndef SWAPCOPY_DEST_INTERNAL_H
#define SWAPCOPY_DEST_INTERNAL_H

#include <glib.h>
#include <libnbd.h>
#include <stdbool.h>
#include <stdint.h>

#include "demand-table.h"
#include "dest.h"
#include "latency-hist.h"
#include "page-store.h"
#include "source-conn.h"

typedef struct Dest Dest;
typedef struct Puller Puller;

/* Background streaming runs on several connections (the source
 * advertises multi-conn): one TCP stream cannot keep up with the link on
 * loopback, where the copy through the socket is the cost. Lane k reads
 * the 256 KiB chunks k, k + STREAM_LANES, k + 2 * STREAM_LANES, ... */
#define STREAM_LANES 4

typedef struct {
    Puller *puller;
    unsigned index;
    int wake;                      /* eventfd */
    GThread *thread;
    bool connected;                /* atomic, for status */
} StreamLane;

/* Everything about one source export (a RAM block): its reverse map, the
 * connection for demand faults and the lanes that stream the rest. */
struct Puller {
    Dest *dest;
    unsigned id;                   /* index in Dest.pullers, stored in REMOTE slots */
    char *name;
    SourceExport source;           /* size and identity, as first listed */
    uint64_t size, pages;
    uint64_t *rev;                 /* page -> slot + 1, 0 if unmapped (mmap'd) */
    uint64_t mapped;               /* pages with a slot */
    uint64_t map_generation;       /* atomic: bumped by every map, so the stream sweeps again */

    DemandQueue demand;            /* pages to read from the source now (demand-table.h) */
    GThread *demand_thread;
    bool demand_connected;         /* atomic, for status */
    StreamLane lanes[STREAM_LANES];
    bool stop;                     /* atomic: threads leave at the next poll */
};

/* Landing mode keeps pages that arrived before the kernel asked for them
 * (its readahead, the rest of a batch) until read: at most this many. */
#define DEST_PARKED_MAX 4096           /* 16 MiB */

/* A REMOTE slot has 12 bits for its export id (page-store.c). */
#define DEST_MAX_EXPORTS 4096

struct Dest {
    PageStore *ps;
    char *host, *port;
    const TlsConfig *tls;          /* the link's TLS (main.c owns it) */
    GHashTable *source_sizes;      /* export name -> SourceExport* */
    /* Of Puller*, index = export id. Added to on the main thread only;
     * sized for DEST_MAX_EXPORTS at start so that its storage never moves
     * under the fault workers, which read it through dest_puller(). */
    GPtrArray *pullers;
    unsigned npullers;             /* atomic: set after pullers[n-1] is in place */

    DemandTable *demand;           /* pages on their way from the source */
    bool stopping;                 /* atomic: no new mappings or fetches */

    /* Policy (atomics; set from the control socket). */
    bool background;
    uint64_t bandwidth_bps;        /* 0: unlimited */
    int64_t fault_timeout_us;

    /* Progress and statistics (atomics). */
    uint64_t mapped_total;
    uint64_t demand_pages, demand_failures, stream_pages, zero_pages;
    uint64_t bytes_fetched;
    uint64_t reconnects;
    LatencyHist fetch_latency;     /* demand fetch: queued -> data here */
    gint64 first_map_us, complete_us;

    GThread *teller;               /* tells the source it is no longer needed */
    bool source_told;              /* atomic: the source acknowledged that */

    char *device;                  /* block device the export is attached as (set by setup) */
    GList *waiters;                /* ControlClient* waiting for all-local */
    guint timer;
};

/* Landing mode (page_store_set_landing): pages go to the kernel, not to
 * the store. */
static inline bool dest_landing(Dest *d)
{
    return page_store_landing(d->ps);
}

/* puller.c */
/* src: what the source said of the export when the migration began; every
 * connection must find the same (source_connect). */
Puller *puller_new(Dest *d, unsigned id, const char *name, const SourceExport *src,
                   GError **error);
void puller_start(Puller *p);
void puller_stop(Puller *p);       /* joins every thread */
/* Ask the threads to leave without waiting for them (they may be in a
 * handshake with an unresponsive source): the main loop must not block. */
void puller_request_stop(Puller *p);
/* New pages were mapped or the policy changed: every lane looks again. */
void puller_wake_stream(Puller *p);
/* Stream connections up right now. */
unsigned puller_stream_connected(Puller *p);
void puller_free(Puller *p);

/* How long an NBD handshake with the source may take: as long as a fault
 * may wait for it (a source that does not answer in that time is of no use
 * to a waiting fault either), or a minute when faults wait for ever. */
static inline int dest_handshake_timeout_ms(Dest *d)
{
    int64_t us = __atomic_load_n(&d->fault_timeout_us, __ATOMIC_RELAXED);
    return us > 0 ? (int)MIN(us / 1000, G_MAXINT) : 60000;
}

static inline uint64_t demand_key(unsigned id, uint64_t page)
{
    return (uint64_t)id << 48 | page;
}

/* dest-tell.c: the control command 'tell-source'. */
void dest_register_tell(Dest *d, ControlServer *cs);

#endif
