/* The demand table: pages readers are waiting for, or will soon ask for,
 * while they travel from the source. The only code that takes its lock.
 *
 * A page's way on the destination: the kernel reads a swap slot
 * (transmission.c) -> the page store finds it remote (page-store.c) ->
 * dest.c asks this table for it -> the export's demand thread (puller.c)
 * takes it from the export's queue and reads it from the source -> back
 * here, to the waiting readers. */
#ifndef SWAPCOPY_DEMAND_TABLE_H
#define SWAPCOPY_DEMAND_TABLE_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "page-store.h"

typedef struct {
    uint64_t key;                  /* export id << 48 | page */
    uint64_t page;
    gint64 queued_us;
    bool done;
    bool parked;
    int err;
    unsigned refs;                 /* the demand thread's (or the table's, parked) + readers' */
    GList link;                    /* in DemandTable.parked */
    unsigned char data[PAGE_SIZE_BYTES];
} DemandEntry;

/* One export's entries not yet sent to the source, oldest first; `wake` is
 * signalled when one is added. */
typedef struct {
    GQueue entries;
    int wake;                      /* eventfd, owned by the caller */
} DemandQueue;

typedef struct DemandTable DemandTable;

/* parked_max: landing mode keeps at most this many pages that arrived
 * before any reader asked for them; the oldest are dropped first. */
DemandTable *demand_table_new(unsigned parked_max);
void demand_table_free(DemandTable *t);
/* From now on no entry is added and fetches fail with ESHUTDOWN; parked
 * pages are dropped. */
void demand_table_stop(DemandTable *t);

/* A reader needs page `page` (key as above) now: wait for it until
 * deadline (monotonic µs). 0 and the page in dst, or an errno: ETIMEDOUT,
 * ESHUTDOWN, or the source's error. */
int demand_table_fetch(DemandTable *t, DemandQueue *q, uint64_t key, uint64_t page,
                       gint64 deadline, void *dst);
typedef struct {
    DemandQueue *q;                /* its export's */
    uint64_t key, page;
} DemandWant;
/* These pages will probably be read soon: queue them without waiting, all
 * at once, so that the demand thread sees consecutive ones together; at
 * the front if urgent (a fault, not a batch), still in this order. */
void demand_table_prefetch(DemandTable *t, const DemandWant *want, size_t n, bool urgent);

/* For the demand thread: up to max entries from q, oldest first. */
guint demand_table_take(DemandTable *t, DemandQueue *q, guint max, DemandEntry **out);
/* Entries taken but not sent (the connection broke) go back to the front. */
void demand_table_requeue(DemandTable *t, DemandQueue *q, DemandEntry **es, guint n);
/* Everything still queued on q, for failing it at shutdown. */
GList *demand_table_take_all(DemandTable *t, DemandQueue *q);
/* The fetch of e ended (err 0: e->data holds the page). Wakes its readers
 * and drops the thread's reference. With park set and no reader waiting,
 * the page stays in the table for the reader that will come. */
void demand_table_done(DemandTable *t, DemandEntry *e, int err, bool park);

/* Readers are waiting for pages (parked ones do not count). */
bool demand_table_faults_pending(DemandTable *t);
guint demand_table_parked(DemandTable *t);

#endif
