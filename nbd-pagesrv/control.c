#include "control.h"

#include <errno.h>
#include <glib-unix.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "listener.h"

#define MAX_LINE 4096

typedef struct {
    char *usage;
    ControlHandler fn;
    gpointer data;
} Command;

struct ControlServer {
    int fd;
    char *path;
    guint source;
    GHashTable *commands;          /* name -> Command* */
    GList *clients;
};

struct ControlClient {
    ControlServer *cs;             /* NULL once the server is gone */
    int fd;                        /* -1 once closed */
    guint source;
    GString *in;
    int refs;
};

void json_append_string(GString *out, const char *s)
{
    g_string_append_c(out, '"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            g_string_append_printf(out, "\\%c", *p);
        else if (*p < 0x20)
            g_string_append_printf(out, "\\u%04x", *p);
        else
            g_string_append_c(out, (char)*p);
    }
    g_string_append_c(out, '"');
}

static void client_close(ControlClient *cl)
{
    if (cl->fd < 0)
        return;
    g_source_remove(cl->source);
    close(cl->fd);
    cl->fd = -1;
    if (cl->cs)
        cl->cs->clients = g_list_remove(cl->cs->clients, cl);
    control_client_unref(cl);
}

ControlClient *control_client_ref(ControlClient *cl)
{
    cl->refs++;
    return cl;
}

void control_client_unref(ControlClient *cl)
{
    if (--cl->refs > 0)
        return;
    g_string_free(cl->in, TRUE);
    g_free(cl);
}

void control_reply(ControlClient *cl, const char *json)
{
    if (cl->fd < 0)
        return;   /* the client left while we worked on its request */
    g_autofree char *line = g_strconcat(json, "\n", NULL);
    size_t len = strlen(line), done = 0;
    while (done < len) {
        ssize_t n = send(cl->fd, line + done, len - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            g_debug("control: reply lost, client gone: %s", g_strerror(errno));
            return;
        }
        done += (size_t)n;
    }
}

void control_reply_error(ControlClient *cl, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_autoptr(GString) out = g_string_new("{\"error\":");
    json_append_string(out, msg);
    g_string_append_c(out, '}');
    control_reply(cl, out->str);
}

static void dispatch(ControlClient *cl, char *line)
{
    g_auto(GStrv) argv = NULL;
    int argc = 0;
    g_strstrip(line);
    if (*line == 0)
        return;
    argv = g_strsplit_set(line, " \t", -1);
    /* Drop the empty strings that repeated blanks leave. */
    int j = 0;
    for (int i = 0; argv[i]; i++) {
        if (*argv[i])
            argv[j++] = argv[i];
        else
            g_free(argv[i]);
    }
    argv[j] = NULL;
    argc = j;
    if (strcmp(argv[0], "help") == 0) {
        g_autoptr(GString) out = g_string_new("{\"commands\":[");
        g_autoptr(GList) keys = g_list_sort(g_hash_table_get_keys(cl->cs->commands),
                                            (GCompareFunc)strcmp);
        for (GList *k = keys; k; k = k->next) {
            Command *c = g_hash_table_lookup(cl->cs->commands, k->data);
            json_append_string(out, c->usage);
            if (k->next)
                g_string_append_c(out, ',');
        }
        g_string_append(out, "]}");
        control_reply(cl, out->str);
        return;
    }
    Command *c = g_hash_table_lookup(cl->cs->commands, argv[0]);
    if (!c) {
        control_reply_error(cl, "unknown command '%s' (send 'help' for the list)", argv[0]);
        return;
    }
    c->fn(cl, argc, argv, c->data);
}

bool control_client_feed(ControlClient *cl, const char *data, size_t len)
{
    g_string_append_len(cl->in, data, (gssize)len);
    char *nl;
    while (cl->fd >= 0 && (nl = memchr(cl->in->str, '\n', cl->in->len))) {
        g_autofree char *line = g_strndup(cl->in->str, (gsize)(nl - cl->in->str));
        g_string_erase(cl->in, 0, nl - cl->in->str + 1);
        control_client_ref(cl);
        dispatch(cl, line);
        control_client_unref(cl);
    }
    if (cl->fd >= 0 && cl->in->len > MAX_LINE) {
        control_reply_error(cl, "request line longer than %d bytes", MAX_LINE);
        client_close(cl);
        return false;
    }
    return cl->fd >= 0;
}

static gboolean on_client_data(gint fd, GIOCondition cond, gpointer data)
{
    (void)cond;
    ControlClient *cl = data;
    char buf[1024];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return G_SOURCE_CONTINUE;
    if (n <= 0) {
        cl->source = 0;
        close(cl->fd);
        cl->fd = -1;
        if (cl->cs)
            cl->cs->clients = g_list_remove(cl->cs->clients, cl);
        control_client_unref(cl);
        return G_SOURCE_REMOVE;
    }
    /* A closed client's source was removed by client_close. */
    return control_client_feed(cl, buf, (size_t)n) ? G_SOURCE_CONTINUE : G_SOURCE_REMOVE;
}

ControlClient *control_client_attach(ControlServer *cs, int fd)
{
    ControlClient *cl = g_new0(ControlClient, 1);
    cl->cs = cs;
    cl->fd = fd;
    cl->refs = 1;
    cl->in = g_string_new(NULL);
    cl->source = g_unix_fd_add(fd, G_IO_IN, on_client_data, cl);
    cs->clients = g_list_prepend(cs->clients, cl);
    return cl;
}

void control_client_detach(ControlClient *cl)
{
    client_close(cl);
}

static gboolean on_accept(gint fd, GIOCondition cond, gpointer data)
{
    (void)cond;
    ControlServer *cs = data;
    int cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (cfd < 0) {
        if (errno != EINTR && errno != EAGAIN)
            g_warning("control: accept on %s failed: %s", cs->path, g_strerror(errno));
        return G_SOURCE_CONTINUE;
    }
    /* The socket is 0600 already; the control commands steer the swap
     * device (map, land, release), so check the peer itself too. */
    char who[96];
    if (!unix_peer_trusted(cfd, who, sizeof who)) {
        g_warning("control: refusing a connection on %s from %s: only root and the daemon's "
                  "own user may control it", cs->path, who);
        static const char refusal[] = "{\"error\":\"permission denied: only root and the "
                                      "daemon's own user may use this control socket\"}\n";
        if (send(cfd, refusal, sizeof refusal - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
            g_debug("control: the refused peer is gone: %s", g_strerror(errno));
        close(cfd);
        return G_SOURCE_CONTINUE;
    }
    control_client_attach(cs, cfd);
    return G_SOURCE_CONTINUE;
}

ControlServer *control_server_new(const char *path, GError **error)
{
    int fd = listen_unix(path, error);
    if (fd < 0)
        return NULL;
    ControlServer *cs = g_new0(ControlServer, 1);
    cs->fd = fd;
    cs->path = g_strdup(path);
    cs->commands = g_hash_table_new(g_str_hash, g_str_equal);
    cs->source = g_unix_fd_add(fd, G_IO_IN, on_accept, cs);
    return cs;
}

static void command_free(gpointer key, gpointer value, gpointer data)
{
    (void)data;
    Command *c = value;
    g_free(key);
    g_free(c->usage);
    g_free(c);
}

void control_server_free(ControlServer *cs)
{
    if (!cs)
        return;
    while (cs->clients) {
        ControlClient *cl = cs->clients->data;
        cl->cs = NULL;
        cs->clients = g_list_delete_link(cs->clients, cs->clients);
        /* client_close would unlink it again; do its other half here. */
        g_source_remove(cl->source);
        close(cl->fd);
        cl->fd = -1;
        control_client_unref(cl);
    }
    g_source_remove(cs->source);
    close(cs->fd);
    unlink(cs->path);
    g_hash_table_foreach(cs->commands, command_free, NULL);
    g_hash_table_unref(cs->commands);
    g_free(cs->path);
    g_free(cs);
}

void control_register(ControlServer *cs, const char *command, const char *usage,
                      ControlHandler fn, gpointer data)
{
    Command *c = g_new0(Command, 1);
    c->usage = g_strdup(usage);
    c->fn = fn;
    c->data = data;
    g_hash_table_insert(cs->commands, g_strdup(command), c);
}
