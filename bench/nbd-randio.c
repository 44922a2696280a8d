/* nbd-randio: 4 KiB random aligned reads or writes against an NBD server at
 * a fixed queue depth, reporting IOPS, bandwidth and per-request latency.
 *
 * Used by bench/nbd-randio.sh to compare nbd-pagesrv with nbdkit; both are
 * driven by this same client, so client overhead cancels out of the ratio.
 *
 * Queue depth N > 1 keeps exactly N requests in flight on one connection
 * (libnbd aio calls + nbd_poll); N == 1 uses the synchronous calls, which is
 * what a simple swap-in path looks like.  Latency is measured from just before
 * the request is handed to libnbd to the completion callback, so it includes
 * the client's own send/receive work, the same for every server.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <glib.h>
#include <libnbd.h>

#define BLOCK 4096u
#define DEFAULT_CAP_MIB 1024
#define PREFILL_CHUNK (4u << 20)

struct opts {
    char *uri;
    char *op;
    int qd;
    double seconds;
    double warmup;
    int size_mib;
    gboolean json;
    gboolean no_prefill;
    gboolean prefill_only;
    gint64 seed;
};

/* One request slot; at most qd of them are in flight. */
struct slot {
    void *buf;
    uint64_t start_ns;
    uint64_t end_ns;
    int error;
};

struct bench {
    struct nbd_handle *h;
    bool is_write;
    uint64_t nblocks;
    GRand *rng;
    struct slot *slots;
    int nslots;
    /* Indices of slots whose request completed since the last scan; filled by
     * the completion callback, which must not call libnbd itself. */
    int *done;
    int ndone;
    GArray *lat_ns;         /* latencies of requests completed in the window */
    uint64_t window_start;  /* ns; completions before this are warm-up */
    uint64_t window_end;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    /* CLOCK_MONOTONIC cannot fail with a valid pointer; checked anyway. */
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        fprintf(stderr, "nbd-randio: clock_gettime(CLOCK_MONOTONIC) failed: %s\n",
                strerror(errno));
        exit(1);
    }
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static G_NORETURN void die_nbd(const char *what, const char *uri)
{
    fprintf(stderr, "nbd-randio: %s on %s failed: %s (is the server running "
            "and serving this export?)\n", what, uri, nbd_get_error());
    exit(1);
}

static uint64_t random_offset(struct bench *b)
{
    /* g_rand_int_range takes gint32 bounds; 1 GiB / 4 KiB = 262144 blocks,
     * and the export is capped well below 2^31 blocks. */
    return (uint64_t)g_rand_int_range(b->rng, 0, (gint32)b->nblocks) * BLOCK;
}

static void record(struct bench *b, uint64_t start, uint64_t end)
{
    if (end >= b->window_start && end < b->window_end) {
        uint64_t lat = end - start;
        g_array_append_val(b->lat_ns, lat);
    }
}

/* Write the measured range once so that reads return real stored data and
 * not the server's "never written" fast path. */
static void prefill(struct bench *b, const char *uri)
{
    int64_t max = nbd_get_block_size(b->h, LIBNBD_SIZE_MAXIMUM);
    uint64_t chunk = PREFILL_CHUNK;
    if (max > 0 && (uint64_t)max < chunk)
        chunk = (uint64_t)max & ~(uint64_t)(BLOCK - 1);
    if (chunk == 0)
        chunk = BLOCK;
    uint64_t total = b->nblocks * BLOCK;
    guint8 *buf = g_malloc(chunk);
    for (uint64_t i = 0; i < chunk; i += sizeof(guint32)) {
        guint32 r = g_rand_int(b->rng);
        memcpy(buf + i, &r, sizeof r);
    }
    for (uint64_t off = 0; off < total; off += chunk) {
        uint64_t len = MIN(chunk, total - off);
        if (nbd_pwrite(b->h, buf, len, off, 0) == -1)
            die_nbd("prefill write", uri);
    }
    g_free(buf);
}

static void run_sync(struct bench *b, const char *uri)
{
    struct slot *s = &b->slots[0];
    for (;;) {
        uint64_t off = random_offset(b);
        uint64_t start = now_ns();
        if (start >= b->window_end)
            break;
        int r = b->is_write ? nbd_pwrite(b->h, s->buf, BLOCK, off, 0)
                            : nbd_pread(b->h, s->buf, BLOCK, off, 0);
        if (r == -1)
            die_nbd(b->is_write ? "4 KiB write" : "4 KiB read", uri);
        record(b, start, now_ns());
    }
}

struct cb_ctx {
    struct bench *b;
    int index;
};

/* Runs inside libnbd with the handle locked: only note the time and queue the
 * slot for the main loop. */
static int on_complete(void *user_data, int *error)
{
    struct cb_ctx *c = user_data;
    struct slot *s = &c->b->slots[c->index];
    s->end_ns = now_ns();
    s->error = *error;
    c->b->done[c->b->ndone++] = c->index;
    return 1; /* retire the command automatically */
}

static void issue(struct bench *b, struct cb_ctx *ctx, const char *uri)
{
    struct slot *s = &b->slots[ctx->index];
    uint64_t off = random_offset(b);
    nbd_completion_callback cb = { .callback = on_complete, .user_data = ctx };
    s->start_ns = now_ns();
    int64_t cookie = b->is_write ? nbd_aio_pwrite(b->h, s->buf, BLOCK, off, cb, 0)
                                 : nbd_aio_pread(b->h, s->buf, BLOCK, off, cb, 0);
    if (cookie == -1)
        die_nbd(b->is_write ? "queueing a 4 KiB write" : "queueing a 4 KiB read", uri);
}

static void run_async(struct bench *b, const char *uri)
{
    struct cb_ctx *ctx = g_new(struct cb_ctx, b->nslots);
    for (int i = 0; i < b->nslots; i++) {
        ctx[i] = (struct cb_ctx){ .b = b, .index = i };
        issue(b, &ctx[i], uri);
    }
    int in_flight = b->nslots;
    bool stopping = false;
    while (in_flight > 0) {
        if (nbd_poll(b->h, -1) == -1)
            die_nbd("nbd_poll", uri);
        int n = b->ndone;
        b->ndone = 0;
        for (int k = 0; k < n; k++) {
            int i = b->done[k];
            struct slot *s = &b->slots[i];
            if (s->error != 0) {
                fprintf(stderr, "nbd-randio: 4 KiB %s on %s failed: %s (check "
                        "the server's log)\n", b->is_write ? "write" : "read",
                        uri, strerror(s->error));
                exit(1);
            }
            record(b, s->start_ns, s->end_ns);
            if (s->end_ns >= b->window_end)
                stopping = true;
            if (stopping)
                in_flight--;
            else
                issue(b, &ctx[i], uri);
        }
    }
    g_free(ctx);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array, in microseconds. */
static double pct_us(const uint64_t *v, size_t n, double p)
{
    double want = p * (double)n;
    size_t rank = (size_t)want;
    if ((double)rank < want)
        rank++;
    if (rank == 0)
        rank = 1;
    return (double)v[rank - 1] / 1000.0;
}

static void parse_args(int argc, char **argv, struct opts *o)
{
    GOptionEntry entries[] = {
        { "uri", 0, 0, G_OPTION_ARG_STRING, &o->uri, "NBD URI of the export (required)", "URI" },
        { "op", 0, 0, G_OPTION_ARG_STRING, &o->op, "read or write (required)", "OP" },
        { "qd", 0, 0, G_OPTION_ARG_INT, &o->qd, "requests kept in flight (default 1)", "N" },
        { "seconds", 0, 0, G_OPTION_ARG_DOUBLE, &o->seconds, "measured duration (default 5)", "S" },
        { "warmup", 0, 0, G_OPTION_ARG_DOUBLE, &o->warmup, "unmeasured warm-up before it (default 1)", "S" },
        { "size-mib", 0, 0, G_OPTION_ARG_INT, &o->size_mib,
          "range to address from offset 0 (default: whole export, at most 1024)", "M" },
        { "json", 0, 0, G_OPTION_ARG_NONE, &o->json, "print one JSON line instead of text", NULL },
        { "no-prefill", 0, 0, G_OPTION_ARG_NONE, &o->no_prefill,
          "reads: skip writing the range first (an earlier --prefill-only did)", NULL },
        { "prefill-only", 0, 0, G_OPTION_ARG_NONE, &o->prefill_only,
          "write the whole range once and exit (no --op needed)", NULL },
        { "seed", 0, 0, G_OPTION_ARG_INT64, &o->seed, "random seed (default: fixed 1)", "N" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    GError *err = NULL;
    GOptionContext *ctx = g_option_context_new("- 4 KiB random I/O benchmark for an NBD server");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &err)) {
        fprintf(stderr, "nbd-randio: %s (see --help)\n", err->message);
        exit(2);
    }
    g_option_context_free(ctx);
    if (argc != 1) {
        fprintf(stderr, "nbd-randio: unexpected argument '%s' (see --help)\n", argv[1]);
        exit(2);
    }
    if (o->prefill_only && o->op == NULL)
        o->op = g_strdup("write");
    if (o->uri == NULL || o->op == NULL) {
        fprintf(stderr, "nbd-randio: --uri and --op are required (see --help)\n");
        exit(2);
    }
    if (strcmp(o->op, "read") != 0 && strcmp(o->op, "write") != 0) {
        fprintf(stderr, "nbd-randio: --op must be 'read' or 'write', not '%s'\n", o->op);
        exit(2);
    }
    if (o->qd < 1 || o->qd > 1024) {
        fprintf(stderr, "nbd-randio: --qd must be between 1 and 1024, not %d\n", o->qd);
        exit(2);
    }
    if (!(o->seconds > 0) || !(o->warmup >= 0)) {
        fprintf(stderr, "nbd-randio: --seconds must be > 0 and --warmup >= 0\n");
        exit(2);
    }
    if (o->size_mib < 0) {
        fprintf(stderr, "nbd-randio: --size-mib must be positive, not %d\n", o->size_mib);
        exit(2);
    }
}

static void report(const struct opts *o, struct bench *b, uint64_t range)
{
    size_t n = b->lat_ns->len;
    uint64_t *v = (uint64_t *)(void *)b->lat_ns->data;
    qsort(v, n, sizeof *v, cmp_u64);
    double iops = (double)n / o->seconds;
    double mibs = iops * BLOCK / (1024.0 * 1024.0);
    double p50 = pct_us(v, n, 0.50), p99 = pct_us(v, n, 0.99);
    double max = (double)v[n - 1] / 1000.0;
    uint64_t size_mib = range >> 20;

    if (o->json)
        printf("{\"op\":\"%s\",\"qd\":%d,\"seconds\":%.3f,\"size_mib\":%" PRIu64
               ",\"requests\":%zu,\"iops\":%.1f,\"mib_s\":%.2f,"
               "\"lat_us\":{\"p50\":%.1f,\"p99\":%.1f,\"max\":%.1f}}\n",
               o->op, o->qd, o->seconds, size_mib, n, iops, mibs, p50, p99, max);
    else
        printf("%s qd=%d 4KiB random over %" PRIu64 " MiB, %.1f s: %.0f IOPS, "
               "%.1f MiB/s, latency p50 %.1f us, p99 %.1f us, max %.1f us "
               "(%zu requests)\n",
               o->op, o->qd, size_mib, o->seconds, iops, mibs, p50, p99, max, n);
}

/* Connects, works out the range, and runs the benchmark; returns the exit
 * status.  Fatal libnbd errors exit directly through die_nbd. */
static int run(const struct opts *o)
{
    struct bench b = { .is_write = strcmp(o->op, "write") == 0 };
    b.h = nbd_create();
    if (b.h == NULL)
        die_nbd("nbd_create", o->uri);
    if (nbd_connect_uri(b.h, o->uri) == -1)
        die_nbd("connecting", o->uri);
    int64_t size = nbd_get_size(b.h);
    if (size == -1)
        die_nbd("nbd_get_size", o->uri);
    if (nbd_is_read_only(b.h) == 1 && (b.is_write || o->prefill_only)) {
        fprintf(stderr, "nbd-randio: export %s is read-only; use --op read "
                "(without prefill: --no-prefill)\n", o->uri);
        nbd_close(b.h);
        return 1;
    }

    uint64_t range = (uint64_t)size;
    if (o->size_mib > 0) {
        range = (uint64_t)o->size_mib << 20;
        if (range > (uint64_t)size) {
            fprintf(stderr, "nbd-randio: --size-mib %d is larger than the export "
                    "(%" PRId64 " bytes) of %s\n", o->size_mib, size, o->uri);
            nbd_close(b.h);
            return 2;
        }
    } else if (range > (uint64_t)DEFAULT_CAP_MIB << 20) {
        range = (uint64_t)DEFAULT_CAP_MIB << 20;
    }
    b.nblocks = range / BLOCK;
    if (b.nblocks == 0) {
        fprintf(stderr, "nbd-randio: export %s is smaller than one 4 KiB block\n", o->uri);
        nbd_close(b.h);
        return 1;
    }

    b.rng = g_rand_new_with_seed((guint32)o->seed);
    b.nslots = o->qd;
    b.slots = g_new0(struct slot, b.nslots);
    b.done = g_new(int, b.nslots);
    for (int i = 0; i < b.nslots; i++) {
        b.slots[i].buf = g_malloc(BLOCK);
        for (unsigned j = 0; j < BLOCK; j += sizeof(guint32)) {
            guint32 r = g_rand_int(b.rng);
            memcpy((char *)b.slots[i].buf + j, &r, sizeof r);
        }
    }
    b.lat_ns = g_array_sized_new(FALSE, FALSE, sizeof(uint64_t), 1u << 20);

    if (o->prefill_only || (!b.is_write && !o->no_prefill))
        prefill(&b, o->uri);
    if (!o->prefill_only) {
        b.window_start = now_ns() + (uint64_t)(o->warmup * 1e9);
        b.window_end = b.window_start + (uint64_t)(o->seconds * 1e9);
        if (o->qd == 1)
            run_sync(&b, o->uri);
        else
            run_async(&b, o->uri);
    }
    if (nbd_shutdown(b.h, 0) == -1)
        die_nbd("nbd_shutdown", o->uri);
    nbd_close(b.h);

    int rc = 0;
    if (!o->prefill_only) {
        if (b.lat_ns->len > 0) {
            report(o, &b, range);
        } else {
            fprintf(stderr, "nbd-randio: no request completed within %.1f s on %s "
                    "(server stalled?)\n", o->seconds, o->uri);
            rc = 1;
        }
    }
    for (int i = 0; i < b.nslots; i++)
        g_free(b.slots[i].buf);
    g_free(b.slots);
    g_free(b.done);
    g_array_free(b.lat_ns, TRUE);
    g_rand_free(b.rng);
    return rc;
}

int main(int argc, char **argv)
{
    struct opts o = { .qd = 1, .seconds = 5, .warmup = 1, .seed = 1 };
    parse_args(argc, argv, &o);
    int rc = run(&o);
    g_free(o.uri);
    g_free(o.op);
    return rc;
}
