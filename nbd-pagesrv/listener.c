#include "listener.h"
#include "tcp-liveness.h"

#include <errno.h>
#include <glib-unix.h>
#include <glib/gstdio.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

struct Listener {
    Server *server;
    int fd;
    char *what;
    gboolean is_unix;
    guint source;
    uint64_t accepted;
};

bool unix_peer_trusted(int fd, char *who, size_t who_size)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
        g_snprintf(who, who_size, "a peer whose credentials cannot be read (%s)",
                   g_strerror(errno));
        return false;
    }
    g_snprintf(who, who_size, "uid %u (pid %d)", (unsigned)cred.uid, (int)cred.pid);
    return cred.uid == 0 || cred.uid == geteuid();
}

/* The directory a socket goes in: created 0700 if missing. One that others
 * may write to (and that is not sticky, like /tmp) lets them replace the
 * socket with their own: warned about, since it is the user's to fix. */
static bool socket_directory(const char *path, GError **error)
{
    g_autofree char *dir = g_path_get_dirname(path);
    struct stat st;
    if (stat(dir, &st) < 0) {
        if (errno != ENOENT || g_mkdir_with_parents(dir, 0700) < 0) {
            int err = errno;
            g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err),
                        "cannot create the directory %s for socket %s: %s", dir, path,
                        g_strerror(err));
            return false;
        }
        return true;
    }
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX))
        g_warning("socket %s is in %s, which users other than its owner may write to: they "
                  "could replace the socket; use a directory only root can write (chmod 0700)",
                  path, dir);
    return true;
}

int listen_unix(const char *path, GError **error)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                    "socket path %s is longer than the %zu bytes a Unix socket allows; "
                    "use a shorter path", path, sizeof sa.sun_path - 1);
        return -1;
    }
    strcpy(sa.sun_path, path);
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_EXIST,
                        "%s exists and is not a socket; refusing to replace it", path);
            return -1;
        }
        /* Replace a socket only if nobody answers on it. */
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0) {
            close(probe);
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                        "another process is serving on %s; stop it or choose another path",
                        path);
            return -1;
        }
        if (probe >= 0)
            close(probe);
        unlink(path);
    }
    if (!socket_directory(path, error))
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    /* Connecting needs write permission on the socket file: created 0600
     * (the umask applies to bind; no other thread creates files while the
     * daemon starts listening), so only its owner and root can. */
    int rc = -1;
    if (fd >= 0) {
        mode_t old = umask(0177);
        rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
        umask(old);
    }
    if (rc < 0 || chmod(path, 0600) < 0 || listen(fd, 64) < 0) {
        int err = errno;
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err),
                    "cannot listen on Unix socket %s: %s", path, g_strerror(err));
        if (fd >= 0)
            close(fd);
        if (rc == 0)
            unlink(path);
        return -1;
    }
    return fd;
}

static gboolean split_hostport(const char *hostport, char **host, char **port, GError **error)
{
    const char *colon = strrchr(hostport, ':');
    if (!colon || colon[1] == 0) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                    "'%s' is not HOST:PORT (e.g. 127.0.0.1:4444)", hostport);
        return FALSE;
    }
    const char *h = hostport, *he = colon;
    if (*h == '[' && he > h && he[-1] == ']') {
        h++;
        he--;
    }
    *host = he > h ? g_strndup(h, (gsize)(he - h)) : NULL;
    *port = g_strdup(colon + 1);
    return TRUE;
}

int listen_tcp(const char *hostport, GError **error)
{
    g_autofree char *host = NULL, *port = NULL;
    if (!split_hostport(hostport, &host, &port, error))
        return -1;
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE }, *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                    "cannot resolve listen address %s: %s", hostport, gai_strerror(rc));
        return -1;
    }
    int fd = -1, err = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 64) == 0)
            break;
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err),
                    "cannot listen on %s: %s (is the port already in use?)", hostport,
                    g_strerror(err));
    return fd;
}

static gboolean on_accept(gint fd, GIOCondition cond, gpointer data)
{
    (void)cond;
    Listener *l = data;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int cfd = accept4(fd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
    if (cfd < 0) {
        if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED)
            g_warning("accept on %s failed: %s (out of file descriptors? raise ulimit -n)",
                      l->what, g_strerror(errno));
        return G_SOURCE_CONTINUE;
    }
    l->accepted++;
    char peer[160];
    if (l->is_unix) {
        char who[96];
        if (!unix_peer_trusted(cfd, who, sizeof who)) {
            g_warning("refusing a connection on %s from %s: only root and the daemon's own "
                      "user may use it", l->what, who);
            close(cfd);
            return G_SOURCE_CONTINUE;
        }
        g_snprintf(peer, sizeof peer, "%s#%" G_GUINT64_FORMAT, l->what, l->accepted);
    } else {
        char h[NI_MAXHOST] = "?", p[NI_MAXSERV] = "?";
        getnameinfo((struct sockaddr *)&ss, sl, h, sizeof h, p, sizeof p,
                    NI_NUMERICHOST | NI_NUMERICSERV);
        int one = 1;
        /* Small replies (4 KiB pages) must not wait for Nagle. A
         * destination that vanished silently must not hold its connection
         * (and a source waiting for its clients to go) for minutes. */
        if (setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 ||
            !tcp_notice_dead_peer(cfd))
            g_warning("cannot tune the TCP connection from %s:%s (TCP_NODELAY, keepalive, "
                      "TCP_USER_TIMEOUT): %s; small replies may be delayed and a dead peer "
                      "go unnoticed for minutes", h, p, g_strerror(errno));
        g_snprintf(peer, sizeof peer, "%s:%s", h, p);
    }
    server_add_connection(l->server, cfd, peer, l->is_unix);
    return G_SOURCE_CONTINUE;
}

Listener *listener_new(Server *s, int fd, const char *what, gboolean is_unix)
{
    Listener *l = g_new0(Listener, 1);
    l->server = s;
    l->fd = fd;
    l->what = g_strdup(what);
    l->is_unix = is_unix;
    l->source = g_unix_fd_add(fd, G_IO_IN, on_accept, l);
    return l;
}

void listener_free(Listener *l)
{
    if (!l)
        return;
    g_source_remove(l->source);
    close(l->fd);
    g_free(l->what);
    g_free(l);
}
