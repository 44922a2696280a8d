#include "demand-table.h"

#include <errno.h>
#include <string.h>

#include "source-conn.h"

struct DemandTable {
    GMutex lock;
    GCond cond;                    /* an entry finished */
    GHashTable *entries;           /* key -> DemandEntry*, not done or parked */
    GQueue parked;                 /* DemandEntry* (their link), oldest first */
    unsigned parked_max;
    bool stopping;
};

DemandTable *demand_table_new(unsigned parked_max)
{
    DemandTable *t = g_new0(DemandTable, 1);
    g_mutex_init(&t->lock);
    g_cond_init(&t->cond);
    t->entries = g_hash_table_new(g_int64_hash, g_int64_equal);
    t->parked_max = parked_max;
    return t;
}

/* Caller holds the lock. */
static void unpark(DemandTable *t, DemandEntry *e)
{
    g_queue_unlink(&t->parked, &e->link);
    g_hash_table_remove(t->entries, &e->key);
    e->parked = false;
    e->refs--;
}

static void drop_parked(DemandTable *t)
{
    while (t->parked.head) {
        DemandEntry *e = t->parked.head->data;
        unpark(t, e);
        if (e->refs == 0)
            g_free(e);
    }
}

void demand_table_stop(DemandTable *t)
{
    g_mutex_lock(&t->lock);
    t->stopping = true;
    drop_parked(t);
    g_cond_broadcast(&t->cond);
    g_mutex_unlock(&t->lock);
}

void demand_table_free(DemandTable *t)
{
    if (!t)
        return;
    demand_table_stop(t);
    g_hash_table_unref(t->entries);
    g_mutex_clear(&t->lock);
    g_cond_clear(&t->cond);
    g_free(t);
}

/* The entry for key, queued for the demand thread if it is new. Caller
 * holds the lock. */
/* The entry for key, queued for the demand thread if it is new: at the
 * tail, or (urgent) just after `*front`, the last urgent one queued by
 * the same call. Caller holds the lock. */
static DemandEntry *get(DemandTable *t, DemandQueue *q, uint64_t key, uint64_t page,
                        GList **front)
{
    DemandEntry *e = g_hash_table_lookup(t->entries, &key);
    if (e)
        return e;
    e = g_new0(DemandEntry, 1);
    e->key = key;
    e->page = page;
    e->queued_us = g_get_monotonic_time();
    e->refs = 1;                               /* the demand thread's */
    e->link.data = e;
    g_hash_table_insert(t->entries, &e->key, e);
    if (front && *front) {
        g_queue_insert_after(&q->entries, *front, e);
        *front = (*front)->next;
    } else if (front) {
        g_queue_push_head(&q->entries, e);
        *front = q->entries.head;
    } else {
        g_queue_push_tail(&q->entries, e);
    }
    wake_fd_signal(q->wake);
    return e;
}

int demand_table_fetch(DemandTable *t, DemandQueue *q, uint64_t key, uint64_t page,
                       gint64 deadline, void *dst)
{
    g_mutex_lock(&t->lock);
    if (t->stopping) {
        g_mutex_unlock(&t->lock);
        return ESHUTDOWN;
    }
    DemandEntry *e = get(t, q, key, page, NULL);
    e->refs++;
    while (!e->done && g_cond_wait_until(&t->cond, &t->lock, deadline))
        ;
    int err = e->done ? e->err : ETIMEDOUT;
    if (e->done && !err)
        memcpy(dst, e->data, PAGE_SIZE_BYTES);
    /* A parked page is read once: the reader owns it now. */
    if (e->parked)
        unpark(t, e);
    bool last = --e->refs == 0;
    g_mutex_unlock(&t->lock);
    if (last)
        g_free(e);
    return err;
}

void demand_table_prefetch(DemandTable *t, const DemandWant *want, size_t n, bool urgent)
{
    g_mutex_lock(&t->lock);
    GList *front = NULL;
    DemandQueue *front_q = NULL;
    for (size_t i = 0; i < n && !t->stopping; i++) {
        if (want[i].q != front_q) {           /* another export's queue */
            front = NULL;
            front_q = want[i].q;
        }
        get(t, want[i].q, want[i].key, want[i].page, urgent ? &front : NULL);
    }
    g_mutex_unlock(&t->lock);
}

guint demand_table_take(DemandTable *t, DemandQueue *q, guint max, DemandEntry **out)
{
    guint n = 0;
    g_mutex_lock(&t->lock);
    while (n < max && !g_queue_is_empty(&q->entries))
        out[n++] = g_queue_pop_head(&q->entries);
    g_mutex_unlock(&t->lock);
    return n;
}

void demand_table_requeue(DemandTable *t, DemandQueue *q, DemandEntry **es, guint n)
{
    g_mutex_lock(&t->lock);
    for (guint i = n; i-- > 0;)
        g_queue_push_head(&q->entries, es[i]);
    g_mutex_unlock(&t->lock);
}

GList *demand_table_take_all(DemandTable *t, DemandQueue *q)
{
    g_mutex_lock(&t->lock);
    GList *all = q->entries.head;
    g_queue_init(&q->entries);
    g_mutex_unlock(&t->lock);
    return all;
}

void demand_table_done(DemandTable *t, DemandEntry *e, int err, bool park)
{
    g_mutex_lock(&t->lock);
    e->done = true;
    e->err = err;
    if (park && !err && e->refs == 1 && !t->stopping) {
        /* Nobody waits yet: the thread's reference becomes the table's. */
        e->parked = true;
        g_queue_push_tail_link(&t->parked, &e->link);
        while (t->parked.length > t->parked_max) {
            DemandEntry *old = t->parked.head->data;
            unpark(t, old);
            if (old->refs == 0)
                g_free(old);
        }
        g_mutex_unlock(&t->lock);
        return;
    }
    g_hash_table_remove(t->entries, &e->key);
    g_cond_broadcast(&t->cond);
    bool last = --e->refs == 0;
    g_mutex_unlock(&t->lock);
    if (last)
        g_free(e);
}

bool demand_table_faults_pending(DemandTable *t)
{
    g_mutex_lock(&t->lock);
    bool pending = g_hash_table_size(t->entries) > t->parked.length;
    g_mutex_unlock(&t->lock);
    return pending;
}

guint demand_table_parked(DemandTable *t)
{
    g_mutex_lock(&t->lock);
    guint n = t->parked.length;
    g_mutex_unlock(&t->lock);
    return n;
}
