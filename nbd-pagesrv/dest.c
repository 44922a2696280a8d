/* The destination role: the slot <-> source page mapping, the demand-fault
 * path the page store calls into, completion, and the control commands
 * that drive them (docs/control-protocol.md). */
#include "dest.h"

#include <errno.h>
#include <string.h>

#include "dest-internal.h"
#include "nbd-proto.h"
#include "seconds-arg.h"
#include "source-conn.h"

#define COMPLETION_CHECK_MS 100
#define READAHEAD_CLUSTER 8            /* the kernel's vm.page-cluster = 3 */

/* ---- the fault path ---------------------------------------------------- */

/* A puller as the fault workers see it: NULL for an id not published yet. */
static Puller *dest_puller(Dest *d, unsigned export_id)
{
    if (export_id >= __atomic_load_n(&d->npullers, __ATOMIC_ACQUIRE))
        return NULL;
    return g_ptr_array_index(d->pullers, export_id);
}

/* PageFetchFn: a reader needs this page now. Waits at most the fault
 * timeout; then EIO, which the kernel turns into SIGBUS for the faulting
 * process: better than a wrong page. */
static int dest_fetch(void *opaque, unsigned export_id, uint64_t page, void *dst)
{
    Dest *d = opaque;
    Puller *p = dest_puller(d, export_id);
    if (!p)
        return EIO;
    gint64 deadline = g_get_monotonic_time() + __atomic_load_n(&d->fault_timeout_us, __ATOMIC_RELAXED);
    int err = demand_table_fetch(d->demand, &p->demand, demand_key(p->id, page), page, deadline, dst);
    if (err == ETIMEDOUT) {
        g_critical("page %" G_GUINT64_FORMAT " of export '%s' did not arrive from the source "
                   "%s:%s within the fault timeout: answering EIO (the faulting process gets "
                   "SIGBUS); check the source and the link", page, p->name, d->host, d->port);
        return EIO;
    }
    return err;
}

/* PagePrefetchFn: the kernel will soon read these slots (the rest of its
 * request, its swap readahead); ask for them now, without waiting. */
static void dest_prefetch(void *opaque, const RemotePage *pages, size_t n, bool urgent)
{
    Dest *d = opaque;
    g_autofree DemandWant *want = g_new(DemandWant, n);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        Puller *p = dest_puller(d, pages[i].export_id);
        if (p)
            want[k++] = (DemandWant){ &p->demand, demand_key(p->id, pages[i].page), pages[i].page };
    }
    demand_table_prefetch(d->demand, want, k, urgent);
}

/* ---- mapping ------------------------------------------------------------ */

static bool list_source_exports(Dest *d, GError **error)
{
    if (!(d->source_sizes = source_list_exports(d->host, d->port, d->tls, dest_handshake_timeout_ms(d), error)))
        return false;
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, d->source_sizes);
    while (g_hash_table_iter_next(&it, &k, &v))
        g_message("source %s:%s offers export '%s' (%" G_GUINT64_FORMAT " MiB, RAM '%s')",
                  d->host, d->port, (char *)k, ((SourceExport *)v)->size >> 20,
                  ((SourceExport *)v)->identity ? ((SourceExport *)v)->identity : "not said");
    return true;
}

static Puller *puller_for(Dest *d, const char *name, GError **error)
{
    for (guint i = 0; i < d->pullers->len; i++) {
        Puller *p = g_ptr_array_index(d->pullers, i);
        if (strcmp(p->name, name) == 0)
            return p;
    }
    /* --src-later: the source had not answered at start. */
    if (!d->source_sizes) {
        gint64 t = g_get_monotonic_time();
        if (!list_source_exports(d, error))
            return NULL;
        g_message("listed the source's exports in %.1f ms, at the first map",
                  (double)(g_get_monotonic_time() - t) / 1e3);
    }
    SourceExport *se = g_hash_table_lookup(d->source_sizes, name);
    if (!se) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "the source %s:%s has no export named '%s'", d->host, d->port, name);
        return NULL;
    }
    if (d->pullers->len >= DEST_MAX_EXPORTS) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "cannot pull export '%s': already pulling from %u exports, the most "
                    "one destination can", name, DEST_MAX_EXPORTS);
        return NULL;
    }
    Puller *p = puller_new(d, d->pullers->len, name, se, error);
    if (p) {
        g_ptr_array_add(d->pullers, p);
        __atomic_store_n(&d->npullers, d->pullers->len, __ATOMIC_RELEASE);
    }
    return p;
}

static bool dest_map(Dest *d, uint64_t slot, const char *name, uint64_t page, uint64_t count,
                     GError **error)
{
    if (__atomic_load_n(&d->stopping, __ATOMIC_RELAXED)) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED, "shutting down");
        return false;
    }
    gint64 t0 = g_get_monotonic_time();
    Puller *p = puller_for(d, name, error);
    if (!p)
        return false;
    gint64 t_puller = g_get_monotonic_time();
    PageStoreCounts c;
    page_store_counts(d->ps, &c);
    if (count == 0 || slot > c.slots || count > c.slots - slot) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "slots %" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT " are outside the device's "
                    "%" G_GUINT64_FORMAT " slots", slot, count, c.slots);
        return false;
    }
    if (page > p->pages || count > p->pages - page) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "pages %" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT " are outside export '%s' "
                    "(%" G_GUINT64_FORMAT " pages)", page, count, name, p->pages);
        return false;
    }
    /* Every slot of a freshly armed region holds a marker. One that holds
     * data got a page the kernel swapped out to this device (it is the
     * top-priority swap): another process's, perhaps. Never map over it. */
    for (uint64_t i = 0; i < count; i++) {
        SlotKind k = page_store_slot_kind(d->ps, slot + i);
        if (k == SLOT_RAM || k == SLOT_FILE) {
            g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                        "slot %" G_GUINT64_FORMAT " holds a page the kernel swapped out to the "
                        "device, not an arming marker: mapping it would destroy that page; "
                        "nothing of this map was applied (arm the region again)", slot + i);
            return false;
        }
    }
    gint64 t_checked = g_get_monotonic_time();
    bool ok = true;
    uint64_t mapped = page_store_map_remote(d->ps, slot, count, p->id, page);
    gint64 t_stored = g_get_monotonic_time();
    if (mapped < count) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "a slot among %" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT " was written "
                    "while being mapped: mapped %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT
                    " slots; arm the region again", slot + mapped, count - mapped, mapped,
                    count);
        count = mapped;
        ok = false;
    }
    for (uint64_t i = 0; i < count; i++) {
        if (!__atomic_load_n(&p->rev[page + i], __ATOMIC_RELAXED))
            p->mapped++;
        __atomic_store_n(&p->rev[page + i], slot + i + 1, __ATOMIC_RELEASE);
    }
    gint64 t_rev = g_get_monotonic_time();
    if (count == 0)
        return false;
    /* What was mapped before a refusal is pulled like any other mapping. */
    __atomic_add_fetch(&d->mapped_total, count, __ATOMIC_RELAXED);
    __atomic_add_fetch(&p->map_generation, 1, __ATOMIC_RELEASE);
    puller_wake_stream(p);
    if (!d->first_map_us)
        d->first_map_us = g_get_monotonic_time();
    d->complete_us = 0;
    puller_start(p);
    gint64 t_end = g_get_monotonic_time();
    g_debug("map of %" G_GUINT64_FORMAT " slots of '%s' in %.1f ms: puller %.1f, kind check %.1f, "
            "slot store %.1f, reverse table %.1f, threads %.1f",
            count, name, (double)(t_end - t0) / 1e3, (double)(t_puller - t0) / 1e3,
            (double)(t_checked - t_puller) / 1e3, (double)(t_stored - t_checked) / 1e3,
            (double)(t_rev - t_stored) / 1e3, (double)(t_end - t_rev) / 1e3);
    return ok;
}

/* ---- completion --------------------------------------------------------- */

static bool all_local(Dest *d)
{
    PageStoreCounts c;
    page_store_counts(d->ps, &c);
    return __atomic_load_n(&d->mapped_total, __ATOMIC_RELAXED) > 0 && c.remote_pages == 0 &&
           c.landed_pages == 0;
}

#define TELL_ATTEMPT_MS 2000

/* Until the source has acknowledged that this destination is done (it
 * exits on that with --exit-when-idle, never on a mere lack of clients),
 * or nbd-pagesrv stops. */
static gpointer tell_source_main(gpointer data)
{
    Dest *d = data;
    gint64 backoff = 100 * 1000;
    bool warned = false;
    while (!__atomic_load_n(&d->stopping, __ATOMIC_RELAXED)) {
        g_autoptr(GError) err = NULL;
        int r = source_tell(d->host, d->port, d->tls, SWAPCOPY_DONE_EXPORT, TELL_ATTEMPT_MS,
                            &err);
        if (r == 1) {
            __atomic_store_n(&d->source_told, true, __ATOMIC_RELEASE);
            g_message("told the source %s:%s that it is no longer needed", d->host, d->port);
            return NULL;
        }
        if (r == 0) {
            g_message("the source %s:%s does not take swapcopy's completion message (not an "
                      "nbd-pagesrv): nothing to tell it", d->host, d->port);
            return NULL;
        }
        if (!warned)
            g_warning("%s; retrying with backoff", err->message);
        warned = true;
        for (gint64 until = g_get_monotonic_time() + backoff;
             g_get_monotonic_time() < until && !__atomic_load_n(&d->stopping, __ATOMIC_RELAXED);)
            g_usleep(50 * 1000);
        backoff = MIN(backoff * 2, (gint64)5 * 1000 * 1000);
    }
    return NULL;
}

static gboolean check_completion(gpointer data)
{
    Dest *d = data;
    if (d->complete_us || !all_local(d))
        return G_SOURCE_CONTINUE;
    d->complete_us = g_get_monotonic_time();
    for (guint i = 0; i < d->pullers->len; i++)
        puller_request_stop(g_ptr_array_index(d->pullers, i));
    g_message("all %" G_GUINT64_FORMAT " mapped pages are local after %.3f s (%" G_GUINT64_FORMAT
              " on demand, %" G_GUINT64_FORMAT " streamed, %" G_GUINT64_FORMAT " zero); the "
              "source is no longer needed", __atomic_load_n(&d->mapped_total, __ATOMIC_RELAXED),
              (double)(d->complete_us - d->first_map_us) / 1e6,
              __atomic_load_n(&d->demand_pages, __ATOMIC_RELAXED),
              __atomic_load_n(&d->stream_pages, __ATOMIC_RELAXED),
              __atomic_load_n(&d->zero_pages, __ATOMIC_RELAXED));
    if (!d->teller)
        d->teller = g_thread_new("tell-source", tell_source_main, d);
    g_autoptr(GString) st = g_string_new(NULL);
    dest_status_json(d, st);
    for (GList *l = d->waiters; l; l = l->next) {
        control_reply(l->data, st->str);
        control_client_unref(l->data);
    }
    g_list_free(d->waiters);
    d->waiters = NULL;
    return G_SOURCE_CONTINUE;
}

/* ---- status ------------------------------------------------------------- */

static const char *state_name(Dest *d)
{
    if (__atomic_load_n(&d->mapped_total, __ATOMIC_RELAXED) == 0)
        return "idle";
    if (d->complete_us)
        return "complete";
    PageStoreCounts c;
    page_store_counts(d->ps, &c);
    /* Every page crossed once; the kernel may still read a landed one
     * again (it dropped its clean copy), so the source is still needed. */
    if (c.remote_pages == 0 && c.landed_pages > 0)
        return "landed";
    for (guint i = 0; i < d->pullers->len; i++) {
        Puller *p = g_ptr_array_index(d->pullers, i);
        if (!__atomic_load_n(&p->demand_connected, __ATOMIC_RELAXED))
            return "source-lost";
    }
    return __atomic_load_n(&d->background, __ATOMIC_RELAXED) ? "streaming" : "demand-only";
}

/* The puller threads and fault workers update these while we read. */
#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

void dest_status_json(Dest *d, GString *out)
{
    PageStoreCounts c;
    page_store_counts(d->ps, &c);
    uint64_t total = __atomic_load_n(&d->mapped_total, __ATOMIC_RELAXED);
    uint64_t remote = c.remote_pages, landed = c.landed_pages;
    uint64_t local = total > remote + landed ? total - remote - landed : 0;
    uint64_t arrived = total > remote ? total - remote : 0;
    gint64 now = g_get_monotonic_time();
    gint64 end = d->complete_us ? d->complete_us : now;
    double secs = d->first_map_us ? (double)(end - d->first_map_us) / 1e6 : 0;
    uint64_t bytes = __atomic_load_n(&d->bytes_fetched, __ATOMIC_RELAXED);
    double rate = secs > 0 ? (double)bytes / secs : 0;
    double eta = arrived && remote && secs > 0 ? secs * (double)remote / (double)arrived : 0;
    g_string_append_printf(out,
        "{\"state\":\"%s\",\"source\":\"%s:%s\",\"pages\":{\"total\":%" G_GUINT64_FORMAT
        ",\"local\":%" G_GUINT64_FORMAT ",\"remote\":%" G_GUINT64_FORMAT
        ",\"landed\":%" G_GUINT64_FORMAT ",\"parked\":%u"
        ",\"demand\":%" G_GUINT64_FORMAT ",\"streamed\":%" G_GUINT64_FORMAT
        ",\"zero\":%" G_GUINT64_FORMAT ",\"demand_failed\":%" G_GUINT64_FORMAT
        "},\"bytes_fetched\":%" G_GUINT64_FORMAT ",\"elapsed_s\":%.3f,\"rate_mib_s\":%.1f"
        ",\"eta_s\":%.1f,\"reconnects\":%" G_GUINT64_FORMAT ",\"policy\":{\"background\":%s"
        ",\"land\":%s,\"bandwidth_mib_s\":%.1f,\"fault_timeout_s\":%.1f},\"fetch_latency_us\":",
        state_name(d), d->host, d->port, total, local, remote, landed,
        demand_table_parked(d->demand), LOAD(d->demand_pages),
        LOAD(d->stream_pages), LOAD(d->zero_pages), LOAD(d->demand_failures), bytes, secs,
        rate / 1048576.0, eta, LOAD(d->reconnects), LOAD(d->background) ? "true" : "false",
        dest_landing(d) ? "true" : "false",
        (double)LOAD(d->bandwidth_bps) / 1048576.0, (double)LOAD(d->fault_timeout_us) / 1e6);
    latency_hist_to_json(&d->fetch_latency, out);
    unsigned demand_up = 0, stream_up = 0;
    for (guint i = 0; i < d->pullers->len; i++) {
        Puller *p = g_ptr_array_index(d->pullers, i);
        demand_up += __atomic_load_n(&p->demand_connected, __ATOMIC_RELAXED);
        stream_up += puller_stream_connected(p);
    }
    g_string_append_printf(out, ",\"source_connections\":{\"demand\":%u,\"stream\":%u}"
                           ",\"source_told_done\":%s}", demand_up, stream_up,
                           __atomic_load_n(&d->source_told, __ATOMIC_ACQUIRE) ? "true" : "false");
}

/* ---- control commands ---------------------------------------------------- */

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (!s || !g_ascii_isdigit(*s))
        return false;
    errno = 0;
    *out = g_ascii_strtoull(s, &end, 10);
    return errno == 0 && *end == 0;
}

static void cmd_map(ControlClient *cl, int argc, char **argv, gpointer data)
{
    Dest *d = data;
    uint64_t slot, page, count;
    if (argc != 5 || !parse_u64(argv[1], &slot) || !parse_u64(argv[3], &page) ||
        !parse_u64(argv[4], &count)) {
        control_reply_error(cl, "usage: map SLOT EXPORT PAGE COUNT");
        return;
    }
    /* '""' names the empty export (nbdkit's default, for one). */
    const char *name = strcmp(argv[2], "\"\"") == 0 ? "" : argv[2];
    g_autoptr(GError) error = NULL;
    if (!dest_map(d, slot, name, page, count, &error)) {
        control_reply_error(cl, "map refused: %s", error->message);
        return;
    }
    g_autofree char *json = g_strdup_printf("{\"mapped\":%" G_GUINT64_FORMAT "}", count);
    control_reply(cl, json);
}

static void cmd_status(ControlClient *cl, int argc, char **argv, gpointer data)
{
    (void)argc;
    (void)argv;
    g_autoptr(GString) out = g_string_new(NULL);
    dest_status_json(data, out);
    control_reply(cl, out->str);
}

static void cmd_slot_states(ControlClient *cl, int argc, char **argv, gpointer data)
{
    Dest *d = data;
    uint64_t first, n;
    PageStoreCounts c;
    page_store_counts(d->ps, &c);
    if (argc != 3 || !parse_u64(argv[1], &first) || !parse_u64(argv[2], &n) || n == 0 ||
        n > 1048576 || first > c.slots || n > c.slots - first) {
        control_reply_error(cl, "usage: slot-states FIRST COUNT (COUNT <= 1048576, inside the "
                                "device's %" G_GUINT64_FORMAT " slots)", c.slots);
        return;
    }
    g_autoptr(GString) out = g_string_new(NULL);
    g_string_printf(out, "{\"first\":%" G_GUINT64_FORMAT ",\"states\":\"", first);
    gsize at = out->len;
    g_string_set_size(out, at + n);
    page_store_slot_letters(d->ps, first, n, out->str + at);
    g_string_append(out, "\"}");
    control_reply(cl, out->str);
}

static void cmd_wait_all_local(ControlClient *cl, int argc, char **argv, gpointer data)
{
    (void)argc;
    (void)argv;
    Dest *d = data;
    if (__atomic_load_n(&d->mapped_total, __ATOMIC_RELAXED) == 0) {
        control_reply_error(cl, "nothing is mapped yet: send 'map' first");
        return;
    }
    if (d->complete_us) {
        cmd_status(cl, 0, NULL, d);
        return;
    }
    d->waiters = g_list_prepend(d->waiters, control_client_ref(cl));
}

/* setup-swap.sh records which block device carries the export, so that
 * an in-process user (a patched QEMU) needs only the control socket. */
static void cmd_device(ControlClient *cl, int argc, char **argv, gpointer data)
{
    Dest *d = data;
    if (argc == 2) {
        g_free(d->device);
        d->device = g_strdup(argv[1]);
    } else if (argc != 1) {
        control_reply_error(cl, "usage: device [PATH]");
        return;
    }
    if (!d->device) {
        control_reply_error(cl, "no device recorded (setup-swap.sh records it with 'device PATH')");
        return;
    }
    g_autoptr(GString) out = g_string_new("{\"device\":");
    json_append_string(out, d->device);
    g_string_append_c(out, '}');
    control_reply(cl, out->str);
}

/* swapstub arm: 'markers COOKIE' before writing its markers, 'markers off'
 * once the mapping is registered. */
static void cmd_markers(ControlClient *cl, int argc, char **argv, gpointer data)
{
    Dest *d = data;
    uint64_t cookie = 0;
    char *end = NULL;
    if (argc == 2 && strcmp(argv[1], "off") == 0) {
        page_store_expect_markers(d->ps, false, 0);
    } else if (argc == 2 && g_ascii_isxdigit(argv[1][0]) &&
               (cookie = g_ascii_strtoull(argv[1], &end, 16), end && *end == 0)) {
        page_store_expect_markers(d->ps, true, cookie);
    } else {
        control_reply_error(cl, "usage: markers COOKIE_HEX | markers off");
        return;
    }
    control_reply(cl, "{\"ok\":true}");
}

/* The bandwidth cap in bytes per second: a finite MiB/s (0 = unlimited)
 * whose byte count fits 64 bits. */
static bool parse_bandwidth(const char *text, uint64_t *bps)
{
    char *end = NULL;
    if (!g_ascii_isdigit(*text) && *text != '.')
        return false;   /* no "nan", "inf", signs */
    double v = g_ascii_strtod(text, &end);
    if (!end || *end || !(v >= 0) || v > (double)(UINT64_MAX >> 21))
        return false;
    *bps = (uint64_t)(v * 1048576.0);
    return true;
}

static void cmd_policy(ControlClient *cl, int argc, char **argv, gpointer data)
{
    Dest *d = data;
    uint64_t bps;
    if (argc == 3 && strcmp(argv[1], "background") == 0 &&
        (strcmp(argv[2], "on") == 0 || strcmp(argv[2], "off") == 0)) {
        __atomic_store_n(&d->background, strcmp(argv[2], "on") == 0, __ATOMIC_RELAXED);
        for (guint i = 0; i < d->pullers->len; i++)
            puller_wake_stream(g_ptr_array_index(d->pullers, i));
    } else if (argc == 3 && strcmp(argv[1], "land") == 0 &&
               (strcmp(argv[2], "on") == 0 || strcmp(argv[2], "off") == 0)) {
        page_store_set_landing(d->ps, strcmp(argv[2], "on") == 0);
        for (guint i = 0; i < d->pullers->len; i++)
            puller_wake_stream(g_ptr_array_index(d->pullers, i));
    } else if (argc == 3 && strcmp(argv[1], "bandwidth") == 0) {
        if (!parse_bandwidth(argv[2], &bps)) {
            control_reply_error(cl, "policy bandwidth: '%s' is not a rate in MiB/s (a number "
                                "from 0 = unlimited up to %" G_GUINT64_FORMAT ")", argv[2],
                                UINT64_MAX >> 21);
            return;
        }
        __atomic_store_n(&d->bandwidth_bps, bps, __ATOMIC_RELAXED);
    } else if (argc == 3 && strcmp(argv[1], "fault-timeout") == 0) {
        int64_t us;
        g_autoptr(GError) error = NULL;
        if (!parse_seconds("policy fault-timeout", argv[2], &us, &error)) {
            control_reply_error(cl, "%s", error->message);
            return;
        }
        __atomic_store_n(&d->fault_timeout_us, us, __ATOMIC_RELAXED);
    } else {
        control_reply_error(cl, "usage: policy background on|off | policy land on|off | "
                                "policy bandwidth MIB_PER_S (0 = unlimited) | "
                                "policy fault-timeout SECONDS");
        return;
    }
    cmd_status(cl, 0, NULL, d);
}

/* The in-process lander (a patched QEMU) has written every page of its
 * region (MADV_POPULATE_WRITE), so no landed slot will be read again
 * without being written first: the source is no longer needed for them. */
static void cmd_release_landed(ControlClient *cl, int argc, char **argv, gpointer data)
{
    (void)argv;
    Dest *d = data;
    if (argc != 1) {
        control_reply_error(cl, "usage: release-landed");
        return;
    }
    uint64_t n = page_store_release_landed(d->ps);
    g_message("released %" G_GUINT64_FORMAT " landed slots: the kernel holds those pages for good",
              n);
    check_completion(d);
    cmd_status(cl, 0, NULL, d);
}

void dest_register_commands(Dest *d, ControlServer *cs)
{
    control_register(cs, "map", "map SLOT EXPORT PAGE COUNT: slots SLOT.. hold pages PAGE.. of "
                     "the source's export EXPORT", cmd_map, d);
    control_register(cs, "status", "status: migration progress as JSON", cmd_status, d);
    control_register(cs, "wait-all-local", "wait-all-local: answer (with the status) once every "
                     "mapped page is local", cmd_wait_all_local, d);
    control_register(cs, "slot-states", "slot-states FIRST COUNT: one letter per slot, E(mpty) "
                     "L(ocal) R(emote) M(arker) D (landed)", cmd_slot_states, d);
    control_register(cs, "markers", "markers COOKIE_HEX | off: recognise swapstub's marker "
                     "pages with this cookie (while arming)", cmd_markers, d);
    control_register(cs, "device", "device [PATH]: record or show the block device carrying "
                     "this export", cmd_device, d);
    control_register(cs, "release-landed", "release-landed: no landed slot will be read again "
                     "(every page of the region was written since); forget them", cmd_release_landed, d);
    control_register(cs, "policy", "policy background on|off | land on|off | bandwidth "
                     "MIB_PER_S | fault-timeout SECONDS", cmd_policy, d);
    dest_register_tell(d, cs);
}

/* ---- lifecycle ---------------------------------------------------------- */

Dest *dest_new(PageStore *ps, const char *src, const TlsConfig *tls, bool src_later,
               int64_t fault_timeout_us, GError **error)
{
    Dest *d = g_new0(Dest, 1);
    d->ps = ps;
    d->tls = tls;
    d->pullers = g_ptr_array_new_full(DEST_MAX_EXPORTS, (GDestroyNotify)puller_free);
    d->demand = demand_table_new(DEST_PARKED_MAX);
    d->background = true;
    d->fault_timeout_us = fault_timeout_us;
    if (!source_split_address(src, &d->host, &d->port, error)) {
        dest_free(d);
        return NULL;
    }
    g_autoptr(GError) not_yet = NULL;
    if (!list_source_exports(d, src_later ? &not_yet : error)) {
        if (!src_later) {
            dest_free(d);
            return NULL;
        }
        g_message("%s; --src-later: its exports will be listed at the first map",
                  not_yet->message);
    }
    page_store_set_fetcher(ps, dest_fetch, dest_prefetch, READAHEAD_CLUSTER, d);
    d->timer = g_timeout_add(COMPLETION_CHECK_MS, check_completion, d);
    return d;
}

void dest_stop(Dest *d)
{
    if (!d)
        return;
    __atomic_store_n(&d->stopping, true, __ATOMIC_RELAXED);
    demand_table_stop(d->demand);
    for (guint i = 0; i < d->pullers->len; i++)
        puller_stop(g_ptr_array_index(d->pullers, i));
    if (d->teller) {
        g_thread_join(d->teller);
        d->teller = NULL;
    }
}

void dest_free(Dest *d)
{
    if (!d)
        return;
    dest_stop(d);
    if (d->timer)
        g_source_remove(d->timer);
    if (d->ps)
        page_store_set_fetcher(d->ps, NULL, NULL, 0, NULL);
    g_ptr_array_unref(d->pullers);     /* stops and joins every thread */
    for (GList *l = d->waiters; l; l = l->next) {
        control_reply_error(l->data, "nbd-pagesrv is shutting down");
        control_client_unref(l->data);
    }
    g_list_free(d->waiters);
    demand_table_free(d->demand);
    if (d->source_sizes)
        g_hash_table_unref(d->source_sizes);
    g_free(d->host);
    g_free(d->port);
    g_free(d->device);
    g_free(d);
}
