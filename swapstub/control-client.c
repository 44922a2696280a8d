/* The client side of nbd-pagesrv's control socket (one line out, one JSON
 * line back; several lines may share a connection). */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "swapstub.h"

/* Lines in flight at once on a shared connection: enough to hide the round
 * trips, few enough that the answers never fill a socket buffer while
 * nbd-pagesrv waits for us to read them. */
#define PIPELINE_LINES 64

static int control_connect(const char *control, GError **error)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(control) >= sizeof sa.sun_path) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_NAMETOOLONG,
                    "control socket path %s is too long", control);
        return -1;
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
        return -1;
    }
    return fd;
}

static bool send_all(int fd, const char *control, const char *what, const char *buf,
                     size_t len, GError **error)
{
    for (size_t done = 0; done < len;) {
        ssize_t n = send(fd, buf + done, len - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                        "sending '%s' to %s failed: %s", what, control, g_strerror(errno));
            return false;
        }
        done += (size_t)n;
    }
    return true;
}

/* The next answer line from *pending (what was read beyond earlier
 * answers), reading more as needed; NULL with *error set if nbd-pagesrv
 * refused the request or closed the connection. */
static char *next_answer(int fd, GString *pending, const char *control, const char *line,
                         GError **error)
{
    char buf[65536];
    char *nl;
    while (!(nl = memchr(pending->str, '\n', pending->len))) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_IO,
                        "nbd-pagesrv (%s) closed the control connection without answering "
                        "'%s'", control, line);
            return NULL;
        }
        g_string_append_len(pending, buf, n);
    }
    char *answer = g_strndup(pending->str, (gsize)(nl - pending->str));
    g_string_erase(pending, 0, nl - pending->str + 1);
    if (g_str_has_prefix(answer, "{\"error\":")) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "nbd-pagesrv refused '%s': %s",
                    line, answer);
        g_free(answer);
        return NULL;
    }
    return answer;
}

char *swapstub_control(const char *control, const char *line, GError **error)
{
    int fd = control_connect(control, error);
    if (fd < 0)
        return NULL;
    g_autofree char *req = g_strconcat(line, "\n", NULL);
    g_autoptr(GString) pending = g_string_new(NULL);
    char *answer = send_all(fd, control, line, req, strlen(req), error)
                   ? next_answer(fd, pending, control, line, error) : NULL;
    close(fd);
    return answer;
}

bool swapstub_control_lines(const char *control, char *const *lines, size_t n,
                            GError **error)
{
    int fd = control_connect(control, error);
    if (fd < 0)
        return false;
    g_autoptr(GString) pending = g_string_new(NULL);
    bool ok = true;
    for (size_t sent = 0, answered = 0; ok && answered < n;) {
        /* Keep up to PIPELINE_LINES requests ahead of their answers. */
        g_autoptr(GString) out = g_string_new(NULL);
        size_t first = sent;
        while (sent < n && sent - answered < PIPELINE_LINES) {
            g_string_append(out, lines[sent++]);
            g_string_append_c(out, '\n');
        }
        if (out->len && !send_all(fd, control, lines[first], out->str, out->len, error))
            ok = false;
        for (size_t k = answered; ok && k < sent; k++, answered++) {
            char *answer = next_answer(fd, pending, control, lines[k], error);
            ok = answer != NULL;
            g_free(answer);
        }
    }
    close(fd);
    return ok;
}
