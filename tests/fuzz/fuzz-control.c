/* libFuzzer harness: the control socket's line parser and every command
 * behind it (control.c, main's stats, dest.c's map/policy/slot-states/
 * markers/device/release-landed/status), as a destination whose source is
 * not up yet (--src-later on a port nothing listens on: 'map' fails after
 * a refused loopback connection). The input is what a client writes; the
 * answers go to the other end of a socketpair and are drained. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "control.h"
#include "dest.h"
#include "page-store.h"

static ControlServer *cs;

static void quiet_log(const gchar *domain, GLogLevelFlags level, const gchar *message,
                      gpointer data)
{
    (void)domain; (void)level; (void)message; (void)data;
}

static void cmd_stats(ControlClient *cl, int argc, char **argv, gpointer data)
{
    (void)argc; (void)argv; (void)data;
    control_reply(cl, "{\"uptime_s\":0}");
}

static void setup(void)
{
    g_log_set_default_handler(quiet_log, NULL);
    GError *error = NULL;
    char sock_dir[] = "/tmp/fuzz-control.XXXXXX";
    if (!mkdtemp(sock_dir))
        abort();
    g_autofree char *sock_path = g_build_filename(sock_dir, "ctl.sock", NULL);
    cs = control_server_new(sock_path, &error);
    /* Clients are attached directly, never through the socket: remove it
     * and its directory now, so that nothing is left however libFuzzer
     * ends (it leaves through _exit on a crash or an interrupt). */
    unlink(sock_path);
    rmdir(sock_dir);
    PageStore *ps = cs ? page_store_new(1024 * PAGE_SIZE_BYTES, NULL, 64 * PAGE_SIZE_BYTES, false, &error) : NULL;
    /* Port 1 on loopback: nothing listens there, the connection is refused. */
    Dest *d = ps ? dest_new(ps, "127.0.0.1:1", NULL, true, 100 * 1000, &error) : NULL;
    if (!d) {
        fprintf(stderr, "fuzz-control: %s\n", error->message);
        abort();
    }
    control_register(cs, "stats", "stats", cmd_stats, NULL);
    dest_register_commands(d, cs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        setup();
        ready = true;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    ControlClient *cl = control_client_attach(cs, sv[0]);
    /* In pieces, as reads would bring it: a line may span two. */
    size_t off = 0;
    bool open = true;
    while (open && off < size) {
        size_t n = MIN(size - off, (size_t)1 + data[off] % 97);
        open = control_client_feed(cl, (const char *)data + off, n);
        off += n;
        char sink[65536];
        while (read(sv[1], sink, sizeof sink) > 0)
            ;
    }
    if (open)
        control_client_detach(cl);
    close(sv[1]);
    return 0;
}
