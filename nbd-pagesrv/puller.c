/* The threads that pull one source export:
 *   demand: pages a reader is waiting for, on a connection of their own so
 *           a fault never queues behind background traffic;
 *   stream: every other mapped page, in export order, on STREAM_LANES
 *           connections with many requests in flight each, skipping
 *           ranges the source reports as zero.
 * Both reconnect with backoff when the source goes away; nothing they
 * receive is installed unless the slot still maps to that very page. */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dest-internal.h"
#include "source-conn.h"

#define DEMAND_DEPTH_PAGES 4096       /* 16 MiB of demand reads in flight at most */
#define DEMAND_RUN_PAGES 256           /* 1 MiB per source read at most */
#define DEMAND_STALL_US (20 * G_USEC_PER_SEC)   /* a read unanswered this long: reconnect */
#define CHUNK_RETRY_MIN_US (100 * 1000)
#define CHUNK_RETRY_MAX_US (5 * 1000 * 1000)
#define STREAM_CHUNK_PAGES 64          /* 256 KiB per background request */
#define STREAM_DEPTH 16                /* per lane */
#define STREAM_DEPTH_UNDER_FAULTS 2    /* all lanes together: leave the link to the faults */
#define STATUS_WINDOW (64u << 20)      /* block status asked 64 MiB at a time */
#define BACKOFF_MIN_US (100 * 1000)
#define BACKOFF_MAX_US (5 * 1000 * 1000)

static bool stopping(Puller *p) { return __atomic_load_n(&p->stop, __ATOMIC_ACQUIRE); }

/* Sleep up to us, in steps short enough to notice `stop`, waking early
 * when the eventfd is signalled. */
static void nap(Puller *p, int wake_fd, gint64 us)
{
    gint64 until = g_get_monotonic_time() + us;
    while (!stopping(p)) {
        gint64 left = until - g_get_monotonic_time();
        if (left <= 0)
            return;
        struct pollfd pfd = { .fd = wake_fd, .events = POLLIN };
        int ms = (int)MAX(1, MIN(left / 1000, 200));
        if (poll(&pfd, 1, ms) > 0) {
            wake_fd_drain(wake_fd);
            return;
        }
    }
}

/* (Re)connect, backing off while the source is away. NULL if stopping.
 * after_loss: this role had a connection, which was lost. */
static struct nbd_handle *connect_retry(Puller *p, const char *role, bool *connected_flag,
                                        int wake_fd, bool after_loss)
{
    Dest *d = p->dest;
    gint64 backoff = BACKOFF_MIN_US;
    bool first = true;
    g_autofree char *said = NULL;  /* the last failure logged: each new one is, once */
    while (!stopping(p)) {
        g_autoptr(GError) err = NULL;
        struct nbd_handle *h = source_connect(d->host, d->port, d->tls, p->name, &p->source,
                                                  dest_handshake_timeout_ms(d), &err);
        if (h) {
            if (!first || after_loss)
                g_message("%s connection for export '%s' re-established", role, p->name);
            __atomic_store_n(connected_flag, true, __ATOMIC_RELEASE);
            return h;
        }
        if (g_strcmp0(said, err->message) != 0) {
            g_warning("%s connection for export '%s': %s; retrying with backoff", role,
                      p->name, err->message);
            g_free(said);
            said = g_strdup(err->message);
        }
        first = false;
        __atomic_add_fetch(&d->reconnects, 1, __ATOMIC_RELAXED);
        nap(p, wake_fd, backoff);
        backoff = MIN(backoff * 2, BACKOFF_MAX_US);
    }
    return NULL;
}

static void lost(Puller *p, struct nbd_handle **h, const char *role, bool *connected_flag)
{
    if (!stopping(p))
        g_warning("%s connection for export '%s' to the source %s:%s lost: %s; pages already "
                  "here are still served, missing ones wait for the reconnection",
                  role, p->name, p->dest->host, p->dest->port, nbd_get_error());
    __atomic_store_n(connected_flag, false, __ATOMIC_RELEASE);
    nbd_close(*h);
    *h = NULL;
}

/* ---- demand ---------------------------------------------------------- */

/* One source read for a run of consecutive pages: the kernel's swap-ins
 * come as ranges (a merged request, its readahead window), and one 1 MiB
 * read costs the source far less than 256 of 4 KiB. */
typedef struct {
    DemandEntry *e[DEMAND_RUN_PAGES];
    guint n;
    unsigned char *buf;
    gint64 sent_us;
    int err;
    bool completed;
} DemandRun;

static int demand_run_done(void *user_data, int *error)
{
    DemandRun *r = user_data;
    r->completed = true;
    r->err = *error;
    return 1;
}

/* Install the page (unless landing: then the reader takes it, or it is
 * parked for the reader to come) and hand it to the table. */
static void demand_finish(Puller *p, DemandEntry *e, const unsigned char *data, int err)
{
    Dest *d = p->dest;
    bool landing = dest_landing(d);
    if (!err) {
        memcpy(e->data, data, PAGE_SIZE_BYTES);
        uint64_t slot = __atomic_load_n(&p->rev[e->page], __ATOMIC_ACQUIRE);
        if (slot && !landing)
            page_store_fill_remote(d->ps, slot - 1, p->id, e->page, e->data);
        __atomic_add_fetch(&d->demand_pages, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&d->bytes_fetched, PAGE_SIZE_BYTES, __ATOMIC_RELAXED);
        latency_hist_add(&d->fetch_latency, (uint64_t)(g_get_monotonic_time() - e->queued_us));
    } else if (err != ESHUTDOWN) {
        __atomic_add_fetch(&d->demand_failures, 1, __ATOMIC_RELAXED);
        g_warning("the source answered error '%s' for page %" G_GUINT64_FORMAT " of export "
                  "'%s': the faulting reader gets EIO", g_strerror(err), e->page, p->name);
    }
    demand_table_done(d->demand, e, err, landing);
}

static void demand_run_finish(Puller *p, DemandRun *r, int err)
{
    for (guint i = 0; i < r->n; i++)
        demand_finish(p, r->e[i], err ? NULL : r->buf + (size_t)i * PAGE_SIZE_BYTES, err);
    g_free(r->buf);
    g_free(r);
}

/* Group taken entries into runs of consecutive pages, in the order taken. */
static void make_runs(DemandEntry **es, guint n, GPtrArray *runs)
{
    DemandRun *r = NULL;
    for (guint i = 0; i < n; i++) {
        if (!r || r->n == DEMAND_RUN_PAGES || es[i]->page != r->e[r->n - 1]->page + 1) {
            r = g_new0(DemandRun, 1);
            g_ptr_array_add(runs, r);
        }
        r->e[r->n++] = es[i];
    }
}

static gpointer demand_main(gpointer data)
{
    Puller *p = data;
    Dest *d = p->dest;
    struct nbd_handle *h = NULL;
    g_autoptr(GPtrArray) runs = g_ptr_array_new();   /* DemandRun*, sent on h */
    g_autoptr(GPtrArray) fresh = g_ptr_array_new();
    DemandEntry **taken = g_new(DemandEntry *, DEMAND_DEPTH_PAGES);
    guint inflight_pages = 0;
    bool was_lost = false;

    while (!stopping(p)) {
        if (!h && !(h = connect_retry(p, "demand", &p->demand_connected, p->demand.wake, was_lost)))
            break;
        guint n = inflight_pages < DEMAND_DEPTH_PAGES
                      ? demand_table_take(d->demand, &p->demand, DEMAND_DEPTH_PAGES - inflight_pages, taken)
                      : 0;
        g_ptr_array_set_size(fresh, 0);
        make_runs(taken, n, fresh);
        bool broken = false;
        for (guint i = 0; i < fresh->len; i++) {
            DemandRun *r = g_ptr_array_index(fresh, i);
            r->buf = g_malloc((size_t)r->n * PAGE_SIZE_BYTES);
            r->sent_us = g_get_monotonic_time();
            g_ptr_array_add(runs, r);
            inflight_pages += r->n;
            if (!broken && nbd_aio_pread(h, r->buf, (size_t)r->n * PAGE_SIZE_BYTES,
                                         r->e[0]->page * PAGE_SIZE_BYTES,
                                         (nbd_completion_callback){ .callback = demand_run_done,
                                                                    .user_data = r },
                                         0) < 0)
                broken = true;
        }
        if (!broken && source_poll(h, p->demand.wake, runs->len ? 100 : 200) < 0)
            broken = true;

        gint64 now = g_get_monotonic_time();
        for (guint i = 0; i < runs->len;) {
            DemandRun *r = g_ptr_array_index(runs, i);
            /* A read the connection failed, or one the source has sat on
             * for too long (it acknowledges, but does not answer): resend
             * it on a new connection. */
            if ((r->completed && r->err && source_error_is_connection(r->err)) ||
                (!r->completed && !broken && now - r->sent_us > DEMAND_STALL_US)) {
                if (!r->completed)
                    g_warning("the source has not answered a read of export '%s' for %.0f s: "
                              "recycling the demand connection", p->name, DEMAND_STALL_US / 1e6);
                broken = true;
            }
            if (r->completed && !(r->err && source_error_is_connection(r->err))) {
                inflight_pages -= r->n;
                g_ptr_array_remove_index(runs, i);
                demand_run_finish(p, r, r->err);
            } else {
                i++;
            }
        }
        if (broken) {
            /* nbd_close retires every command: after it no callback runs,
             * so what is still in runs is sent again on the next connection. */
            lost(p, &h, "demand", &p->demand_connected);
            was_lost = true;
            for (guint i = runs->len; i-- > 0;) {
                DemandRun *r = g_ptr_array_index(runs, i);
                demand_table_requeue(d->demand, &p->demand, r->e, r->n);
                g_free(r->buf);
                g_free(r);
            }
            g_ptr_array_set_size(runs, 0);
            inflight_pages = 0;
        }
    }
    if (h)
        nbd_close(h);
    /* Stopping: fail whatever is left so no reader waits for us. */
    for (guint i = 0; i < runs->len; i++)
        demand_run_finish(p, g_ptr_array_index(runs, i), ESHUTDOWN);
    GList *left = demand_table_take_all(d->demand, &p->demand);
    for (GList *l = left; l; l = l->next)
        demand_finish(p, l->data, NULL, ESHUTDOWN);
    g_list_free(left);
    g_free(taken);
    __atomic_store_n(&p->demand_connected, false, __ATOMIC_RELEASE);
    return NULL;
}

/* ---- background stream ------------------------------------------------ */

typedef struct {
    Puller *p;
    uint64_t first, n;             /* export pages */
    unsigned char *buf;
    bool completed;
    int err;
} Chunk;

typedef struct {
    uint64_t start, end;           /* pages, [start, end) */
    bool zero;
} Span;

/* What the source said about the pages [win_start, win_end). */
typedef struct {
    GArray *spans;                 /* of Span, ascending */
    uint64_t win_start, win_end;
    guint hint;                    /* where the last lookup ended */
    bool have_meta;
} StatusWindow;

static bool page_wanted(Puller *p, uint64_t page)
{
    uint64_t slot = __atomic_load_n(&p->rev[page], __ATOMIC_RELAXED);
    return slot && page_store_slot_kind(p->dest->ps, slot - 1) == SLOT_REMOTE;
}

static int collect_spans(void *user_data, const char *ctx, uint64_t offset, uint32_t *entries,
                         size_t nr, int *error)
{
    (void)error;
    StatusWindow *w = user_data;
    if (strcmp(ctx, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
        return 0;
    uint64_t off = offset;
    for (size_t i = 0; i + 1 < nr; i += 2) {
        uint64_t end = off + entries[i];
        Span s;
        /* Only whole pages inside a zero extent are skipped; a page that
         * is partly data is read. */
        if (entries[i + 1] & LIBNBD_STATE_ZERO)
            s = (Span){ (off + PAGE_SIZE_BYTES - 1) / PAGE_SIZE_BYTES, end / PAGE_SIZE_BYTES, true };
        else
            s = (Span){ off / PAGE_SIZE_BYTES, (end + PAGE_SIZE_BYTES - 1) / PAGE_SIZE_BYTES, false };
        if (s.end > s.start)
            g_array_append_val(w->spans, s);
        off = end;
    }
    return 0;
}

/* Make w describe pages from `page` on. Without base:allocation (another
 * NBD server as source) everything is data. Returns -1 if h failed. */
static int refresh_window(Puller *p, struct nbd_handle *h, StatusWindow *w, uint64_t page)
{
    g_array_set_size(w->spans, 0);
    w->hint = 0;
    uint64_t off = page * PAGE_SIZE_BYTES, len = MIN((uint64_t)STATUS_WINDOW, p->size - off);
    if (w->have_meta &&
        nbd_block_status(h, len, off,
                         (nbd_extent_callback){ .callback = collect_spans, .user_data = w }, 0) < 0) {
        if (nbd_aio_is_dead(h) || nbd_aio_is_closed(h))
            return -1;
        g_warning("block status of export '%s' at %" G_GUINT64_FORMAT " failed: %s; "
                  "treating the range as data", p->name, off, nbd_get_error());
        g_array_set_size(w->spans, 0);
    }
    if (w->spans->len == 0)
        g_array_append_val(w->spans, ((Span){ page, (off + len) / PAGE_SIZE_BYTES, false }));
    w->win_start = page;
    w->win_end = g_array_index(w->spans, Span, w->spans->len - 1).end;
    return 0;
}

/* 1 if the source reports page as zero, 0 if it must be read, -1 if h
 * failed. Lookups go forward from the last one: a lane's pages ascend. */
static int page_is_zero_range(Puller *p, struct nbd_handle *h, StatusWindow *w, uint64_t page)
{
    if ((page < w->win_start || page >= w->win_end) && refresh_window(p, h, w, page) < 0)
        return -1;
    if (w->hint >= w->spans->len || g_array_index(w->spans, Span, w->hint).start > page)
        w->hint = 0;
    for (; w->hint < w->spans->len; w->hint++) {
        const Span *s = &g_array_index(w->spans, Span, w->hint);
        if (page < s->start)
            return 0;          /* a gap in the description: read it */
        if (page < s->end)
            return s->zero;
    }
    return 0;
}

static void install_zero_page(Puller *p, uint64_t page)
{
    static const unsigned char zero[PAGE_SIZE_BYTES];
    uint64_t slot = __atomic_load_n(&p->rev[page], __ATOMIC_ACQUIRE);
    if (slot && page_store_fill_remote(p->dest->ps, slot - 1, p->id, page, zero))
        __atomic_add_fetch(&p->dest->zero_pages, 1, __ATOMIC_RELAXED);
}

/* The next of this lane's chunks, from chunk index *next on, that has a
 * page worth reading; NULL when the lane has gone through the export.
 * Wanted pages the source reports as zero are installed on the way,
 * without a transfer. */
static Chunk *next_chunk(StreamLane *l, struct nbd_handle *h, StatusWindow *w, uint64_t *next,
                         bool *broken)
{
    Puller *p = l->puller;
    uint64_t nchunks = (p->pages + STREAM_CHUNK_PAGES - 1) / STREAM_CHUNK_PAGES;
    for (; *next < nchunks && !stopping(p); *next += STREAM_LANES) {
        uint64_t start = *next * STREAM_CHUNK_PAGES;
        uint64_t end = MIN(start + STREAM_CHUNK_PAGES, p->pages);
        uint64_t first = end, last = start;    /* wanted data pages: [first, last) */
        for (uint64_t pg = start; pg < end; pg++) {
            if (!page_wanted(p, pg))
                continue;
            int zero = page_is_zero_range(p, h, w, pg);
            if (zero < 0) {
                *broken = true;
                return NULL;
            }
            if (zero) {
                install_zero_page(p, pg);
            } else {
                first = MIN(first, pg);
                last = pg + 1;
            }
        }
        /* Landing: the kernel reads the data pages itself (through the
         * device, which fetches them); the stream only settles zero ones. */
        if (first >= last || dest_landing(p->dest))
            continue;
        *next += STREAM_LANES;
        Chunk *c = g_new0(Chunk, 1);
        c->p = p;
        c->first = first;
        c->n = last - first;
        c->buf = g_malloc(c->n * PAGE_SIZE_BYTES);
        return c;
    }
    return NULL;
}

static int chunk_done(void *user_data, int *error)
{
    Chunk *c = user_data;
    c->completed = true;
    c->err = *error;
    return 1;
}

static void chunk_install(Chunk *c)
{
    Puller *p = c->p;
    uint64_t installed = 0;
    for (uint64_t i = 0; i < c->n; i++) {
        /* dest_map (main thread) may be filling in rev[] meanwhile. */
        uint64_t page = c->first + i, slot = __atomic_load_n(&p->rev[page], __ATOMIC_ACQUIRE);
        if (slot && page_store_fill_remote(p->dest->ps, slot - 1, p->id, page,
                                           c->buf + i * PAGE_SIZE_BYTES))
            installed++;
    }
    __atomic_add_fetch(&p->dest->stream_pages, installed, __ATOMIC_RELAXED);
    __atomic_add_fetch(&p->dest->bytes_fetched, c->n * PAGE_SIZE_BYTES, __ATOMIC_RELAXED);
}

static void chunk_free(Chunk *c)
{
    g_free(c->buf);
    g_free(c);
}

/* Requests lane l may have in flight: while a fault waits, the whole
 * stream keeps STREAM_DEPTH_UNDER_FAULTS, so the link is the faults'. */
static unsigned stream_depth(StreamLane *l)
{
    Dest *d = l->puller->dest;
    if (!demand_table_faults_pending(d->demand))
        return STREAM_DEPTH;
    return l->index < STREAM_DEPTH_UNDER_FAULTS ? 1 : 0;
}

/* The bandwidth cap as a token bucket per lane, each at its share of the
 * cap: credit accrues at that rate up to one chunk's worth, so time spent
 * disconnected or idle never turns into a burst, and a lowered cap applies
 * at once. */
typedef struct {
    double tokens;
    gint64 last_us;
    uint64_t bps;                  /* the cap it was set up for */
} TokenBucket;

static bool take_tokens(Dest *d, TokenBucket *tb, uint64_t n)
{
    uint64_t cap = __atomic_load_n(&d->bandwidth_bps, __ATOMIC_RELAXED);
    gint64 now = g_get_monotonic_time();
    if (cap == 0) {
        tb->bps = 0;
        return true;
    }
    if (cap != tb->bps || tb->last_us == 0) {
        *tb = (TokenBucket){ (double)n, now, cap };
    } else {
        tb->tokens += (double)cap / STREAM_LANES * (double)(now - tb->last_us) / 1e6;
        tb->tokens = MIN(tb->tokens, (double)n);
        tb->last_us = now;
    }
    if (tb->tokens < (double)n)
        return false;
    tb->tokens -= (double)n;
    return true;
}

static gpointer stream_main(gpointer data)
{
    StreamLane *l = data;
    Puller *p = l->puller;
    Dest *d = p->dest;
    struct nbd_handle *h = NULL;
    g_autoptr(GPtrArray) inflight = g_ptr_array_new();   /* Chunk* */
    GQueue retry = G_QUEUE_INIT;
    StatusWindow w = { .spans = g_array_new(FALSE, FALSE, sizeof(Span)) };
    uint64_t next = l->index;      /* chunk index */
    uint64_t nchunks = (p->pages + STREAM_CHUNK_PAGES - 1) / STREAM_CHUNK_PAGES;
    uint64_t swept_generation = __atomic_load_n(&p->map_generation, __ATOMIC_ACQUIRE);
    TokenBucket tb = { 0 };
    /* Chunks the source answered with an error are tried again later, with
     * a growing delay, and reported sparingly: not at once and for ever. */
    gint64 retry_at = 0, retry_delay = CHUNK_RETRY_MIN_US;
    uint64_t chunk_errors = 0;
    bool was_lost = false;

    while (!stopping(p)) {
        if (!__atomic_load_n(&d->background, __ATOMIC_RELAXED)) {
            nap(p, l->wake, 200000);
            continue;
        }
        if (!h) {
            if (!(h = connect_retry(p, "background", &l->connected, l->wake, was_lost)))
                break;
            w.have_meta = nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) > 0;
            w.win_start = w.win_end = 0;
        }
        bool broken = false;
        unsigned depth = stream_depth(l);
        while (!broken && inflight->len < depth) {
            Chunk *c = g_get_monotonic_time() >= retry_at ? g_queue_pop_head(&retry) : NULL;
            if (!c)
                c = next_chunk(l, h, &w, &next, &broken);
            if (!c)
                break;
            if (!take_tokens(d, &tb, c->n * PAGE_SIZE_BYTES)) {
                g_queue_push_head(&retry, c);
                break;
            }
            g_ptr_array_add(inflight, c);
            if (nbd_aio_pread(h, c->buf, c->n * PAGE_SIZE_BYTES, c->first * PAGE_SIZE_BYTES,
                              (nbd_completion_callback){ .callback = chunk_done, .user_data = c },
                              0) < 0)
                broken = true;
        }
        if (!broken && inflight->len == 0) {
            if (next >= nchunks && g_queue_is_empty(&retry)) {
                /* Everything mapped so far has been asked for; pages mapped
                 * later (behind the cursor) need another sweep. */
                uint64_t gen = __atomic_load_n(&p->map_generation, __ATOMIC_ACQUIRE);
                if (gen != swept_generation) {
                    swept_generation = gen;
                    next = l->index;
                    w.win_start = w.win_end = 0;
                    continue;
                }
                nap(p, l->wake, 200000);
                continue;
            }
            nap(p, l->wake, 20000);   /* the bandwidth cap, or faults have the link */
            continue;
        }
        if (!broken && source_poll(h, l->wake, 100) < 0)
            broken = true;
        for (guint i = 0; i < inflight->len;) {
            Chunk *c = g_ptr_array_index(inflight, i);
            if (!c->completed) {
                i++;
                continue;
            }
            g_ptr_array_remove_index(inflight, i);
            if (c->err == 0) {
                chunk_install(c);
                chunk_free(c);
                retry_delay = CHUNK_RETRY_MIN_US;
            } else {
                if (!source_error_is_connection(c->err)) {
                    if (++chunk_errors <= 3 || chunk_errors % 100 == 0)
                        g_warning("the source answered error '%s' reading pages %" G_GUINT64_FORMAT
                                  "..%" G_GUINT64_FORMAT " of export '%s' (%" G_GUINT64_FORMAT
                                  " such answers so far); will retry in %.1f s",
                                  g_strerror(c->err), c->first, c->first + c->n - 1, p->name,
                                  chunk_errors, retry_delay / 1e6);
                    retry_at = g_get_monotonic_time() + retry_delay;
                    retry_delay = MIN(retry_delay * 2, (gint64)CHUNK_RETRY_MAX_US);
                }
                c->completed = false;
                c->err = 0;
                g_queue_push_tail(&retry, c);
            }
        }
        if (broken) {
            lost(p, &h, "background", &l->connected);
            was_lost = true;
            for (guint i = 0; i < inflight->len; i++) {
                Chunk *c = g_ptr_array_index(inflight, i);
                c->completed = false;
                c->err = 0;
                g_queue_push_tail(&retry, c);
            }
            g_ptr_array_set_size(inflight, 0);
        }
    }
    if (h)
        nbd_close(h);
    for (guint i = 0; i < inflight->len; i++)
        chunk_free(g_ptr_array_index(inflight, i));
    g_queue_clear_full(&retry, (GDestroyNotify)chunk_free);
    g_array_unref(w.spans);
    __atomic_store_n(&l->connected, false, __ATOMIC_RELEASE);
    return NULL;
}

/* ---- lifecycle -------------------------------------------------------- */

Puller *puller_new(Dest *d, unsigned id, const char *name, const SourceExport *src,
                   GError **error)
{
    uint64_t size = src->size;
    Puller *p = g_new0(Puller, 1);
    p->dest = d;
    p->id = id;
    p->name = g_strdup(name);
    p->size = size;
    p->source = (SourceExport){ size, g_strdup(src->identity) };
    p->pages = size / PAGE_SIZE_BYTES;
    g_queue_init(&p->demand.entries);
    p->demand.wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    bool fds_ok = p->demand.wake >= 0;
    for (unsigned i = 0; i < STREAM_LANES; i++) {
        p->lanes[i] = (StreamLane){ .puller = p, .index = i,
                                    .wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) };
        fds_ok &= p->lanes[i].wake >= 0;
    }
    size_t bytes = MAX((size_t)p->pages, 1) * sizeof(uint64_t);
    p->rev = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p->rev != MAP_FAILED) {
        /* The first map writes the reverse table in full, on the way to
         * the switch: 8 MiB per 4 GiB of fresh memory, whose first touch,
         * a page at a time, took ~25 ms here. In huge pages populated by
         * one call it takes ~1 ms. Both are hints: where the kernel has
         * neither (no THP; MADV_POPULATE_WRITE is Linux 5.14), the first
         * map takes the page faults, as before. */
        if (madvise(p->rev, bytes, MADV_HUGEPAGE) < 0 ||
            madvise(p->rev, bytes, MADV_POPULATE_WRITE) < 0)
            g_debug("export '%s': the reverse table is left to fault in page by page (%s)",
                    name, g_strerror(errno));
    }
    if (!fds_ok || p->rev == MAP_FAILED) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot set up pulling of export '%s' (%" G_GUINT64_FORMAT " pages): %s",
                    name, p->pages, g_strerror(errno));
        if (p->rev == MAP_FAILED)
            p->rev = NULL;
        puller_free(p);
        return NULL;
    }
    return p;
}

void puller_start(Puller *p)
{
    if (p->demand_thread && !stopping(p))
        return;
    puller_stop(p);    /* threads asked to leave at completion: wait for them first */
    __atomic_store_n(&p->stop, false, __ATOMIC_RELEASE);
    g_autofree char *dn = g_strdup_printf("demand:%s", p->name);
    p->demand_thread = g_thread_new(dn, demand_main, p);
    for (unsigned i = 0; i < STREAM_LANES; i++) {
        g_autofree char *sn = g_strdup_printf("stream%u:%s", i, p->name);
        p->lanes[i].thread = g_thread_new(sn, stream_main, &p->lanes[i]);
    }
}

void puller_wake_stream(Puller *p)
{
    for (unsigned i = 0; i < STREAM_LANES; i++)
        wake_fd_signal(p->lanes[i].wake);
}

unsigned puller_stream_connected(Puller *p)
{
    unsigned n = 0;
    for (unsigned i = 0; i < STREAM_LANES; i++)
        n += __atomic_load_n(&p->lanes[i].connected, __ATOMIC_RELAXED);
    return n;
}

void puller_request_stop(Puller *p)
{
    __atomic_store_n(&p->stop, true, __ATOMIC_RELEASE);
    wake_fd_signal(p->demand.wake);
    puller_wake_stream(p);
}

void puller_stop(Puller *p)
{
    if (!p->demand_thread)
        return;
    puller_request_stop(p);
    g_thread_join(p->demand_thread);
    p->demand_thread = NULL;
    for (unsigned i = 0; i < STREAM_LANES; i++) {
        g_thread_join(p->lanes[i].thread);
        p->lanes[i].thread = NULL;
    }
}

void puller_free(Puller *p)
{
    if (!p)
        return;
    puller_stop(p);
    if (p->rev)
        munmap(p->rev, MAX((size_t)p->pages, 1) * sizeof(uint64_t));
    if (p->demand.wake >= 0)
        close(p->demand.wake);
    for (unsigned i = 0; i < STREAM_LANES; i++)
        if (p->lanes[i].wake >= 0)
            close(p->lanes[i].wake);
    g_free(p->name);
    g_free(p->source.identity);
    g_free(p);
}
