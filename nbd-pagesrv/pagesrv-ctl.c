/* pagesrv-ctl: send one command to nbd-pagesrv's control socket and print
 * the JSON answer. Exit status 1 if the server answered {"error":...}. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <glib.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: pagesrv-ctl CONTROL_SOCKET COMMAND [ARG...]\n"
                        "       pagesrv-ctl CONTROL_SOCKET help   lists the commands\n");
        return 2;
    }
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(argv[1]) >= sizeof sa.sun_path) {
        fprintf(stderr, "pagesrv-ctl: socket path %s is too long\n", argv[1]);
        return 2;
    }
    strcpy(sa.sun_path, argv[1]);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        fprintf(stderr, "pagesrv-ctl: cannot connect to %s: %s (is nbd-pagesrv running with "
                        "--control %s?)\n", argv[1], strerror(errno), argv[1]);
        return 2;
    }
    g_autofree char *line = g_strjoinv(" ", argv + 2);
    g_autofree char *req = g_strconcat(line, "\n", NULL);
    size_t len = strlen(req);
    for (size_t done = 0; done < len;) {
        ssize_t n = send(fd, req + done, len - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "pagesrv-ctl: sending to %s failed: %s\n", argv[1], strerror(errno));
            return 2;
        }
        done += (size_t)n;
    }
    g_autoptr(GString) reply = g_string_new(NULL);
    char buf[4096];
    while (!strchr(reply->str, '\n')) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "pagesrv-ctl: %s closed the connection without a complete answer\n",
                    argv[1]);
            return 2;
        }
        g_string_append_len(reply, buf, n);
    }
    close(fd);
    fputs(reply->str, stdout);
    return g_str_has_prefix(reply->str, "{\"error\":") ? 1 : 0;
}
