/* The client side of nbd-pagesrv's control socket (one line out, one JSON
 * line back). */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "swapstub.h"

char *swapstub_control(const char *control, const char *line, GError **error)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(control) >= sizeof sa.sun_path) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_NAMETOOLONG,
                    "control socket path %s is too long", control);
        return NULL;
    }
    strcpy(sa.sun_path, control);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot reach nbd-pagesrv's control socket %s: %s (is nbd-pagesrv "
                    "running? scripts/setup-swap.sh prints the path)", control,
                    g_strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    g_autofree char *req = g_strconcat(line, "\n", NULL);
    size_t len = strlen(req), done = 0;
    while (done < len) {
        ssize_t n = send(fd, req + done, len - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                        "sending '%s' to %s failed: %s", line, control, g_strerror(errno));
            close(fd);
            return NULL;
        }
        done += (size_t)n;
    }
    GString *reply = g_string_new(NULL);
    char buf[65536];
    while (!memchr(reply->str, '\n', reply->len)) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_IO,
                        "nbd-pagesrv (%s) closed the control connection without answering "
                        "'%s'", control, line);
            g_string_free(reply, TRUE);
            close(fd);
            return NULL;
        }
        g_string_append_len(reply, buf, n);
    }
    close(fd);
    g_strchomp(reply->str);
    if (g_str_has_prefix(reply->str, "{\"error\":")) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "nbd-pagesrv refused '%s': %s",
                    line, reply->str);
        g_string_free(reply, TRUE);
        return NULL;
    }
    return g_string_free(reply, FALSE);
}
