/* nbd-pagesrv: the NBD server behind swapcopy's swap device.
 *
 *   destination / swap device:  nbd-pagesrv --size SIZE --socket PATH [--fuse DIR] [--src HOST:PORT]
 *   migration source:           nbd-pagesrv --export NAME=FILE --listen HOST:PORT
 *
 * This file parses options, builds the exports, and runs the GLib main loop
 * until SIGINT/SIGTERM; the protocol lives in handshake.c/transmission.c. */
#include <errno.h>
#include <arpa/inet.h>
#include <glib-unix.h>
#include <malloc.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "control.h"
#include "daemon-safety.h"
#include "dest.h"
#include "file-export.h"
#include "fuse-front.h"
#include "limits.h"
#include "listener.h"
#include "page-store-export.h"
#include "seconds-arg.h"
#include "server.h"
#include "size-arg.h"
#include "tls-config.h"

typedef struct {
    /* Options. */
    char *size_arg;
    char *name;
    char **sockets;
    char **listens;
    char *store_path;
    char *mem_limit_arg;
    gboolean mem_prealloc;
    char *control_path;
    char *fuse_dir;
    char **export_specs;
    gboolean exports_on_stdin;
    char *src;
    gboolean src_later;
    char *fault_timeout_arg;
    int64_t fault_timeout_us;
    gint max_connections;
    char *handshake_timeout_arg;
    char *tls_arg, *tls_psk, *tls_certificates, *tls_username;
    gboolean exit_when_idle;
    gboolean no_mlock;
    gboolean verbose;
    gint stats_interval;

    /* Running state. */
    TlsConfig tls;                 /* the source link's TLS, both roles */
    Server server;
    GPtrArray *listeners;          /* of Listener* */
    ControlServer *control;
    FuseFront *fuse;
    Dest *dest;
    GMainLoop *loop;
    int exit_status;
} App;

static void app_stats_json(App *app, GString *out)
{
    g_string_append_c(out, '{');
    server_stats_to_json(&app->server.stats, out);
    GPtrArray *exports = app->server.exports.exports;
    /* The swap device's store is what users ask about first. */
    Export *first = exports->len ? g_ptr_array_index(exports, 0) : NULL;
    if (first && first->ops->stats_json) {
        g_string_append(out, ",\"store\":");
        first->ops->stats_json(first, out);
    }
    if (app->dest) {
        g_string_append(out, ",\"destination\":");
        dest_status_json(app->dest, out);
    } else {
        /* A source: what its destination has said (nbd-proto.h). */
        g_string_append_printf(out, ",\"destination_ready\":%s,\"destination_done\":%s",
                               __atomic_load_n(&app->server.destination_ready, __ATOMIC_ACQUIRE)
                                   ? "true" : "false",
                               __atomic_load_n(&app->server.destination_done, __ATOMIC_ACQUIRE)
                                   ? "true" : "false");
    }
    g_string_append(out, ",\"exports\":[");
    for (guint i = 0; i < exports->len; i++) {
        Export *e = g_ptr_array_index(exports, i);
        g_string_append_printf(out, "%s{\"name\":", i ? "," : "");
        json_append_string(out, e->name);
        g_string_append_printf(out, ",\"size\":%" G_GUINT64_FORMAT ",\"read_only\":%s}",
                               e->size, e->read_only ? "true" : "false");
    }
    g_string_append(out, "]}");
}

static void cmd_stats(ControlClient *cl, int argc, char **argv, gpointer data)
{
    (void)argc;
    (void)argv;
    g_autoptr(GString) out = g_string_new(NULL);
    app_stats_json(data, out);
    control_reply(cl, out->str);
}

static void log_stats(App *app, const char *when)
{
    /* Connection threads update the counters as this reads them. */
#define L(x) __atomic_load_n(&s->x, __ATOMIC_RELAXED)
    ServerStats *s = &app->server.stats;
    g_message("statistics %s: %" G_GUINT64_FORMAT " connections; requests: read %"
              G_GUINT64_FORMAT ", write %" G_GUINT64_FORMAT ", flush %" G_GUINT64_FORMAT
              ", trim %" G_GUINT64_FORMAT ", write_zeroes %" G_GUINT64_FORMAT ", other %"
              G_GUINT64_FORMAT ", errors %" G_GUINT64_FORMAT "; %.1f MiB read, %.1f MiB "
              "written; latency p50 %" G_GUINT64_FORMAT " us, p99 %" G_GUINT64_FORMAT
              " us, max %" G_GUINT64_FORMAT " us", when, L(connections_total),
              L(requests[NBD_CMD_READ]), L(requests[NBD_CMD_WRITE]), L(requests[NBD_CMD_FLUSH]),
              L(requests[NBD_CMD_TRIM]), L(requests[NBD_CMD_WRITE_ZEROES]),
              L(requests[NBD_CMD_CACHE]) + L(requests[NBD_CMD_BLOCK_STATUS]) +
                  L(requests[NBD_CMD_DISC]) + L(requests_invalid),
              L(errors), (double)L(bytes_read) / 1048576.0,
              (double)L(bytes_written) / 1048576.0, latency_hist_quantile(&s->latency, 0.5),
              latency_hist_quantile(&s->latency, 0.99), L(latency.max_us));
#undef L
}

static gboolean on_quit_signal(gpointer data)
{
    App *app = data;
    g_message("signal received: shutting down");
    g_main_loop_quit(app->loop);
    return G_SOURCE_CONTINUE;
}

static gboolean on_usr1(gpointer data)
{
    log_stats(data, "so far");
    return G_SOURCE_CONTINUE;
}

static gboolean on_stats_timer(gpointer data)
{
    log_stats(data, "so far");
    return G_SOURCE_CONTINUE;
}

static bool add_swap_device(App *app, GError **error)
{
    uint64_t size, mem_limit = 256u << 20;
    if (!parse_size("--size", app->size_arg, &size, error))
        return false;
    if (app->mem_limit_arg && !parse_size("--mem-limit", app->mem_limit_arg, &mem_limit, error))
        return false;
    if (size % 4096) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "--size %s is not a multiple of 4 KiB (the swap page size)", app->size_arg);
        return false;
    }
    PageStore *ps = page_store_new(size, app->store_path, mem_limit, app->mem_prealloc, error);
    if (!ps)
        return false;
    export_set_add(&app->server.exports,
                   page_store_export_new(app->name ? app->name : "swap", ps, size));
    if (app->src) {
        app->dest = dest_new(ps, app->src, &app->tls, app->src_later, app->fault_timeout_us, error);
        if (!app->dest)
            return false;
    }
    g_message("swap device export '%s': %" G_GUINT64_FORMAT " MiB, RAM up to %" G_GUINT64_FORMAT
              " MiB, then spill file %s", app->name ? app->name : "swap", size >> 20,
              mem_limit >> 20, app->store_path ? app->store_path : "(temporary)");
    return true;
}

#define EXPORT_LINE_MAX 8192

/* --exports-on-stdin: a prepared destination's agent starts the source's
 * exporter before the source's RAM file is known, so that the exporter's
 * own start (~15 ms here, more on a busy host: dynamic linking, library
 * set-up) is not on the way from `migrate` to the switch. Returns false
 * with *error on a read error; with no error and no export if none came. */
static bool read_exports_from_stdin(App *app, GError **error)
{
    g_autoptr(GPtrArray) specs = g_ptr_array_new_with_free_func(g_free);
    char line[EXPORT_LINE_MAX];
    while (fgets(line, sizeof line, stdin)) {
        size_t n = strcspn(line, "\n");
        if (line[n] != '\n' && !feof(stdin)) {
            g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                        "--exports-on-stdin: a line of standard input is longer than %d bytes: "
                        "give NAME=FILE per line", EXPORT_LINE_MAX - 1);
            return false;
        }
        line[n] = '\0';
        if (n == 0)
            break;
        g_ptr_array_add(specs, g_strdup(line));
    }
    if (ferror(stdin)) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "--exports-on-stdin: reading standard input failed: %s", g_strerror(errno));
        return false;
    }
    if (specs->len == 0)
        return true;
    g_ptr_array_add(specs, NULL);
    g_ptr_array_set_free_func(specs, NULL);
    app->export_specs = (char **)g_ptr_array_free(g_steal_pointer(&specs), FALSE);
    return true;
}

static bool add_source_exports(App *app, GError **error)
{
    for (char **spec = app->export_specs; spec && *spec; spec++) {
        if (g_str_has_prefix(*spec, "swapcopy:")) {
            g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                        "--export %s: names starting with 'swapcopy:' are reserved for "
                        "swapcopy's own messages; choose another name", *spec);
            return false;
        }
        Export *e = file_export_new(*spec, error);
        if (!e)
            return false;
        export_set_add(&app->server.exports, e);
        g_message("source export '%s': %s, %" G_GUINT64_FORMAT " MiB, read-only", e->name,
                  strchr(*spec, '=') + 1, e->size >> 20);
    }
    return true;
}

/* --exit-when-idle: a source is done once its destination has said so
 * (the completion message, nbd-proto.h) and every client has gone. A count
 * of connections alone is no proof: a network blip that resets them all
 * would make the source exit with pages still missing. */
static gboolean check_idle(gpointer data)
{
    App *app = data;
    ServerStats *s = &app->server.stats;
    if (__atomic_load_n(&app->server.destination_done, __ATOMIC_ACQUIRE) &&
        __atomic_load_n(&s->connections_current, __ATOMIC_RELAXED) == 0) {
        g_message("the destination has every page and every client has disconnected: "
                  "exiting (--exit-when-idle)");
        g_main_loop_quit(app->loop);
        return G_SOURCE_REMOVE;
    }
    return G_SOURCE_CONTINUE;
}

/* True if the listening socket fd is bound to a loopback address only. */
static bool bound_to_loopback(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return false;
    if (ss.ss_family == AF_INET)
        return (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss.ss_family == AF_INET6) {
        const struct in6_addr *a = &((struct sockaddr_in6 *)&ss)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) ||
               (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return false;
}

static bool start_listening(App *app, GError **error)
{
    for (char **p = app->sockets; p && *p; p++) {
        int fd = listen_unix(*p, error);
        if (fd < 0)
            return false;
        g_ptr_array_add(app->listeners, listener_new(&app->server, fd, *p, TRUE));
        g_message("serving NBD on Unix socket %s", *p);
    }
    for (char **p = app->listens; p && *p; p++) {
        int fd = listen_tcp(*p, error);
        if (fd < 0)
            return false;
        g_ptr_array_add(app->listeners, listener_new(&app->server, fd, *p, FALSE));
        g_message("serving NBD on TCP %s (TLS %s%s)", *p, tls_mode_name(app->tls.mode),
                  app->tls.psk_file ? ", pre-shared key" : app->tls.cert_dir ? ", X.509" : "");
        /* Warned about, not refused: a dedicated migration link or VPN is
         * a legitimate place for plaintext, and a patched QEMU listens on
         * 0.0.0.0 by default (docs/security.md). */
        if (app->tls.mode != TLS_REQUIRE && !bound_to_loopback(fd))
            g_warning("!!! %s is reachable from other hosts and TLS is %s: anyone who can reach "
                      "it can %s, and anyone on the path can read and rewrite the pages; give "
                      "--tls-psk FILE (or --tls-certificates DIR) on both ends, or listen on "
                      "127.0.0.1 !!!", *p, app->tls.mode == TLS_ON ? "optional" : "off",
                      app->export_specs ? "read the guest's memory" : "use the swap device");
    }
    if (app->fuse_dir) {
        app->fuse = fuse_front_new(g_ptr_array_index(app->server.exports.exports, 0),
                                   &app->server.stats, app->fuse_dir, error);
        if (!app->fuse)
            return false;
    }
    if (app->control_path) {
        app->control = control_server_new(app->control_path, error);
        if (!app->control)
            return false;
        control_register(app->control, "stats", "stats: counters, latency and store as JSON",
                         cmd_stats, app);
        if (app->dest)
            dest_register_commands(app->dest, app->control);
        g_message("control socket %s", app->control_path);
    }
    return true;
}

static bool parse_options(App *app, int *argc, char ***argv, GError **error)
{
    GOptionEntry entries[] = {
        { "size", 0, 0, G_OPTION_ARG_STRING, &app->size_arg,
          "Serve a swap device of SIZE bytes (K/M/G suffixes)", "SIZE" },
        { "name", 0, 0, G_OPTION_ARG_STRING, &app->name,
          "Export name of the swap device (default: swap)", "NAME" },
        { "socket", 0, 0, G_OPTION_ARG_STRING_ARRAY, &app->sockets,
          "Listen on a Unix socket (repeatable)", "PATH" },
        { "listen", 0, 0, G_OPTION_ARG_STRING_ARRAY, &app->listens,
          "Listen on TCP (repeatable)", "HOST:PORT" },
        { "store", 0, 0, G_OPTION_ARG_FILENAME, &app->store_path,
          "Spill file for pages beyond --mem-limit (default: unlinked file in $TMPDIR)", "FILE" },
        { "mem-limit", 0, 0, G_OPTION_ARG_STRING, &app->mem_limit_arg,
          "RAM the page store may use before spilling (default: 256M)", "SIZE" },
        { "mem-prealloc", 0, 0, G_OPTION_ARG_NONE, &app->mem_prealloc,
          "Map and touch the whole --mem-limit at start, in the background, not as pages arrive", NULL },
        { "fuse", 0, 0, G_OPTION_ARG_FILENAME, &app->fuse_dir,
          "Also serve the swap device as the file DIR/nbd over FUSE, for a loop device where "
          "the kernel has no nbd driver (DIR must exist)", "DIR" },
        { "export", 0, 0, G_OPTION_ARG_STRING_ARRAY, &app->export_specs,
          "Source role: serve FILE (or FILE@OFFSET+SIZE, e.g. a window of /proc/PID/mem) read-only as export NAME (repeatable)", "NAME=FILE" },
        { "exports-on-stdin", 0, 0, G_OPTION_ARG_NONE, &app->exports_on_stdin,
          "Source role, started ahead of knowing its exports: read them (NAME=FILE lines, up to "
          "an empty line or the end of input) from standard input, then serve them; none: exit",
          NULL },
        { "src", 0, 0, G_OPTION_ARG_STRING, &app->src,
          "Destination role: pull mapped pages from the source at HOST:PORT", "HOST:PORT" },
        { "src-later", 0, 0, G_OPTION_ARG_NONE, &app->src_later,
          "With --src: the source may start later; list its exports at the first map", NULL },
        { "fault-timeout", 0, 0, G_OPTION_ARG_STRING, &app->fault_timeout_arg,
          "Seconds a read waits for a missing page before EIO, and an NBD handshake with "
          "the source may take (default: 60)", "SECS" },
        { "max-connections", 0, 0, G_OPTION_ARG_INT, &app->max_connections,
          "NBD connections served at once; more are closed at accept (default: 128)", "N" },
        { "handshake-timeout", 0, 0, G_OPTION_ARG_STRING, &app->handshake_timeout_arg,
          "Seconds a client may take from connecting to entering transmission, TLS "
          "included (default: 30)", "SECS" },
        { "exit-when-idle", 0, 0, G_OPTION_ARG_NONE, &app->exit_when_idle,
          "Source role: exit once the destination has said it has every page and every client has gone", NULL },
        { "tls", 0, 0, G_OPTION_ARG_STRING, &app->tls_arg,
          "TLS on the source link: require (default with a key or certificates), on "
          "(optional) or off", "MODE" },
        { "tls-psk", 0, 0, G_OPTION_ARG_FILENAME, &app->tls_psk,
          "Pre-shared key file (psktool's format) for the source link, the same on both ends",
          "FILE" },
        { "tls-certificates", 0, 0, G_OPTION_ARG_FILENAME, &app->tls_certificates,
          "Directory of ca-cert.pem and server-cert.pem/server-key.pem (source) or "
          "client-cert.pem/client-key.pem (destination)", "DIR" },
        { "tls-username", 0, 0, G_OPTION_ARG_STRING, &app->tls_username,
          "Destination: the PSK identity to use (default: the key file's first)", "NAME" },
        { "control", 0, 0, G_OPTION_ARG_FILENAME, &app->control_path,
          "Control socket (statistics, mappings; see docs/control-protocol.md)", "PATH" },
        { "stats-interval", 0, 0, G_OPTION_ARG_INT, &app->stats_interval,
          "Log statistics every SECS seconds (default: only on SIGUSR1 and at exit)", "SECS" },
        { "no-mlock", 0, 0, G_OPTION_ARG_NONE, &app->no_mlock,
          "Do not lock the server's memory (unsafe when serving swap)", NULL },
        { "verbose", 'v', 0, G_OPTION_ARG_NONE, &app->verbose, "Log every connection", NULL },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- serve swapcopy's swap device over NBD");
    g_option_context_add_main_entries(ctx, entries, NULL);
    g_option_context_set_description(ctx,
        "Example: nbd-pagesrv --size 2G --socket /run/swapcopy/vm1.sock --control /run/swapcopy/vm1.ctl\n"
        "Documentation: docs/nbd-pagesrv.md");
    if (!g_option_context_parse(ctx, argc, argv, error))
        return false;
    if (*argc > 1) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                    "unexpected argument '%s' (see --help)", (*argv)[1]);
        return false;
    }
    if (app->exports_on_stdin && (app->export_specs || app->size_arg)) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                    "--exports-on-stdin replaces --export, and is for a source (no --size)");
        return false;
    }
    if (!app->size_arg && !app->export_specs && !app->exports_on_stdin) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                    "nothing to serve: give --size SIZE for a swap device, or --export "
                    "NAME=FILE on a migration source (see --help)");
        return false;
    }
    if (app->size_arg && app->export_specs) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                    "--size (destination swap device) and --export (source) are different "
                    "roles: run one nbd-pagesrv for each");
        return false;
    }
    if (app->src && !app->size_arg) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                    "--src needs --size: the swap device whose slots are pulled from the source");
        return false;
    }
    if (app->mem_prealloc && !app->size_arg) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                    "--mem-prealloc goes with --size: it preallocates the swap device's RAM pool");
        return false;
    }
    if (app->fuse_dir && !app->size_arg) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                    "--fuse DIR goes with --size: it serves the swap device as a file");
        return false;
    }
    if (app->src_later && !app->src) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                    "--src-later goes with --src HOST:PORT (the source that comes up later)");
        return false;
    }
    app->fault_timeout_us = 60 * G_USEC_PER_SEC;
    if (app->fault_timeout_arg &&
        !parse_seconds("--fault-timeout", app->fault_timeout_arg, &app->fault_timeout_us, error))
        return false;
    if (app->handshake_timeout_arg) {
        int64_t us;
        if (!parse_seconds("--handshake-timeout", app->handshake_timeout_arg, &us, error))
            return false;
        /* Whole seconds, at least one: the deadline is kept in seconds. */
        app->server.handshake_timeout_s = (int)MAX(1, (us + G_USEC_PER_SEC - 1) / G_USEC_PER_SEC);
    }
    if (app->max_connections < 0 || app->max_connections > 65536) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "--max-connections %d: give a number from 1 to 65536", app->max_connections);
        return false;
    }
    if (app->max_connections > 0)
        app->server.max_connections = (unsigned)app->max_connections;
    /* The server side of TLS serves TCP clients; the client side is the
     * destination's link to its source. */
    if (!tls_config_init(&app->tls, app->tls_arg, app->tls_psk, app->tls_certificates,
                         app->tls_username, app->listens != NULL, app->src != NULL, error))
        return false;
    if (tls_config_enabled(&app->tls) && !app->listens && !app->src) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                    "TLS is for the link between source and destination: give --listen "
                    "HOST:PORT (source) or --src HOST:PORT (destination); Unix sockets are "
                    "protected by their mode");
        return false;
    }
    if (tls_config_enabled(&app->tls) && app->listens) {
        app->server.tls = tls_server_new(&app->tls, error);
        if (!app->server.tls)
            return false;
        app->server.tls_mode = app->tls.mode;
    }
    if (!app->sockets && !app->listens && !app->fuse_dir) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                    "no address to serve on: give --socket PATH, --listen HOST:PORT or --fuse DIR");
        return false;
    }
    return true;
}

static void app_free(App *app)
{
    if (app->listeners)
        g_ptr_array_unref(app->listeners);
    /* Stop pulling first: readers waiting for the source are answered
     * (ESHUTDOWN) so their connections can end; the store outlives both. */
    dest_stop(app->dest);
    fuse_front_free(app->fuse);
    app->fuse = NULL;
    server_shutdown(&app->server);
    dest_free(app->dest);
    app->dest = NULL;
    control_server_free(app->control);
    for (char **p = app->sockets; p && *p; p++)
        unlink(*p);
    server_clear(&app->server);
    if (app->loop)
        g_main_loop_unref(app->loop);
    g_free(app->size_arg);
    g_free(app->name);
    g_strfreev(app->sockets);
    g_strfreev(app->listens);
    g_free(app->store_path);
    g_free(app->mem_limit_arg);
    g_free(app->control_path);
    g_free(app->fuse_dir);
    g_strfreev(app->export_specs);
    g_free(app->src);
    g_free(app->fault_timeout_arg);
    g_free(app->tls_arg);
    g_free(app->tls_psk);
    g_free(app->tls_certificates);
    g_free(app->tls_username);
    tls_config_clear(&app->tls);
    g_free(app->handshake_timeout_arg);
}

int main(int argc, char **argv)
{
    App app = { 0 };
    g_autoptr(GError) error = NULL;
    g_set_prgname("nbd-pagesrv");
    /* A client that vanishes must cost us an EPIPE, not the process. */
    signal(SIGPIPE, SIG_IGN);
    /* limits.h says why this value. */
    if (mallopt(M_MMAP_THRESHOLD, LIMIT_MMAP_THRESHOLD) != 1)
        g_warning("mallopt(M_MMAP_THRESHOLD, %u) failed: large request buffers may stay in "
                  "the heap after use", LIMIT_MMAP_THRESHOLD);

    server_init(&app.server);
    app.listeners = g_ptr_array_new_with_free_func((GDestroyNotify)listener_free);
    if (!parse_options(&app, &argc, &argv, &error))
        goto fail;
    if (app.verbose)
        g_log_set_debug_enabled(TRUE);
    if (app.exports_on_stdin) {
        if (!read_exports_from_stdin(&app, &error))
            goto fail;
        if (!app.export_specs) {
            g_message("--exports-on-stdin: standard input ended with no export: nothing to serve");
            app_free(&app);
            return 0;
        }
    }
    if (app.size_arg ? !add_swap_device(&app, &error) : !add_source_exports(&app, &error))
        goto fail;
    daemon_make_swap_safe(!app.no_mlock);
    if (!start_listening(&app, &error))
        goto fail;

    app.loop = g_main_loop_new(NULL, FALSE);
    g_unix_signal_add(SIGINT, on_quit_signal, &app);
    g_unix_signal_add(SIGTERM, on_quit_signal, &app);
    g_unix_signal_add(SIGUSR1, on_usr1, &app);
    if (app.exit_when_idle)
        g_timeout_add(200, check_idle, &app);
    if (app.stats_interval > 0)
        g_timeout_add_seconds((guint)app.stats_interval, on_stats_timer, &app);
    g_main_loop_run(app.loop);

    log_stats(&app, "at exit");
    app_free(&app);
    return app.exit_status;

fail:
    fprintf(stderr, "nbd-pagesrv: %s\n", error->message);
    app_free(&app);
    return 1;
}
