/* The control command 'tell-source ready': a destination on another host
 * tells its source that its RAM is armed and registered, so the source may
 * now start the migration (swapcopy-migrate --role source waits for this
 * word). The exchange runs in a thread; the control client gets its answer
 * once the source has acknowledged, or the attempt has timed out. */
#include <string.h>

#include "control.h"
#include "dest-internal.h"
#include "nbd-proto.h"

#define TELL_READY_TIMEOUT_MS 5000

typedef struct {
    ControlClient *client;
    char *host, *port;
    const TlsConfig *tls;          /* the Dest's: lives as long as nbd-pagesrv */
    int result;                    /* source_tell()'s */
    GError *error;
} TellJob;

/* On the main loop, where control clients are answered. */
static gboolean tell_answer(gpointer data)
{
    TellJob *j = data;
    if (j->result < 0)
        control_reply_error(j->client, "%s; is the source's exporter up (nbd-pagesrv --export "
                            "... --listen)?", j->error->message);
    else if (j->result == 0)
        control_reply_error(j->client, "the source %s:%s does not take swapcopy's words: it "
                            "is not an nbd-pagesrv exporter", j->host, j->port);
    else {
        g_message("told the source %s:%s that this destination is ready", j->host, j->port);
        control_reply(j->client, "{\"told\":\"ready\"}");
    }
    control_client_unref(j->client);
    g_clear_error(&j->error);
    g_free(j->host);
    g_free(j->port);
    g_free(j);
    return G_SOURCE_REMOVE;
}

static gpointer tell_thread(gpointer data)
{
    TellJob *j = data;
    j->result = source_tell(j->host, j->port, j->tls, SWAPCOPY_READY_EXPORT,
                            TELL_READY_TIMEOUT_MS, &j->error);
    g_idle_add(tell_answer, j);
    return NULL;
}

static void cmd_tell_source(ControlClient *cl, int argc, char **argv, gpointer data)
{
    Dest *d = data;
    if (argc != 2 || strcmp(argv[1], "ready") != 0) {
        control_reply_error(cl, "usage: tell-source ready");
        return;
    }
    TellJob *j = g_new0(TellJob, 1);
    j->client = control_client_ref(cl);
    j->host = g_strdup(d->host);
    j->port = g_strdup(d->port);
    j->tls = d->tls;
    /* Short-lived and answered through the main loop: not joined. */
    g_thread_unref(g_thread_new("tell-ready", tell_thread, j));
}

void dest_register_tell(Dest *d, ControlServer *cs)
{
    control_register(cs, "tell-source", "tell-source ready: tell the source that this "
                     "destination is armed and registered (a migration between two hosts)",
                     cmd_tell_source, d);
}
