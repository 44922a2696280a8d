/* hostile-conns: many NBD connections that try to make a server hold
 * memory or connection slots (tests/limits.bats).
 *
 *   hostile-conns ADDRESS EXPORT MODE N HOLD_S
 *
 * ADDRESS is HOST:PORT or a Unix socket path. MODE:
 *   write   handshake, then announce a 32 MiB WRITE and send all of its
 *           payload but the last MiB (the attack of issue 16)
 *   read    handshake, then ask for four 32 MiB READs and never read the
 *           replies
 *   silent  connect and say nothing
 *   options send up to 1000 NBD_OPT_STRUCTURED_REPLY options, each after
 *           the last one's reply, until the server closes ("answered K")
 * Prints "ready N" once every connection is in place, holds them HOLD_S
 * seconds, then prints how many the server had closed ("closed K") and
 * exits 0; 1 if the connections could not be set up as asked. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MiB (1024u * 1024u)

static void die(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "hostile-conns: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s%s\n", err ? ": " : "", err ? strerror(err) : "");
    exit(1);
}

static int dial(const char *addr)
{
    int fd;
    if (addr[0] == '/') {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", addr);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
            die(errno, "cannot connect to %s", addr);
        return fd;
    }
    char host[256];
    snprintf(host, sizeof host, "%s", addr);
    char *colon = strrchr(host, ':');
    if (!colon)
        die(0, "'%s' is neither HOST:PORT nor a socket path", addr);
    *colon = 0;
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res;
    if (getaddrinfo(host, colon + 1, &hints, &res) != 0)
        die(0, "cannot resolve %s", addr);
    fd = socket(res->ai_family, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, res->ai_addr, res->ai_addrlen) < 0)
        die(errno, "cannot connect to %s", addr);
    freeaddrinfo(res);
    return fd;
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static void put64(unsigned char *p, uint64_t v)
{
    put32(p, v >> 32);
    put32(p + 4, (uint32_t)v);
}

static void send_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die(errno, "sending to the server failed%s", "");
        p += n;
        len -= (size_t)n;
    }
}

static void recv_all(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len) {
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die(n < 0 ? errno : 0, "the server closed the connection during the handshake%s", "");
        p += n;
        len -= (size_t)n;
    }
}

/* Fixed newstyle handshake up to transmission on export name. */
static void handshake(int fd, const char *name)
{
    unsigned char greet[18], flags[4], opt[16 + 4 + 256 + 2];
    recv_all(fd, greet, sizeof greet);
    put32(flags, 3);   /* FIXED_NEWSTYLE | NO_ZEROES */
    send_all(fd, flags, sizeof flags);
    size_t n = strlen(name);
    put64(opt, UINT64_C(0x49484156454f5054));
    put32(opt + 8, 7);   /* NBD_OPT_GO */
    put32(opt + 12, (uint32_t)(4 + n + 2));
    put32(opt + 16, (uint32_t)n);
    memcpy(opt + 20, name, n);
    opt[20 + n] = opt[21 + n] = 0;
    send_all(fd, opt, 22 + n);
    for (;;) {
        unsigned char rep[20], skip[512];
        recv_all(fd, rep, sizeof rep);
        uint32_t type = (uint32_t)rep[12] << 24 | rep[13] << 16 | rep[14] << 8 | rep[15];
        uint32_t len = (uint32_t)rep[16] << 24 | rep[17] << 16 | rep[18] << 8 | rep[19];
        if (len > sizeof skip)
            die(0, "unexpected %s-sized option reply", "large");
        recv_all(fd, skip, len);
        if (type == 1)
            return;   /* NBD_REP_ACK */
        if (type & 0x80000000u)
            die(0, "the server refused NBD_OPT_GO for export '%s'", name);
    }
}

static void request(int fd, uint16_t type, uint64_t cookie, uint32_t len)
{
    unsigned char req[28] = { 0 };
    put32(req, 0x25609513);
    req[6] = type >> 8;
    req[7] = (unsigned char)type;
    put64(req + 8, cookie);
    put64(req + 16, 0);
    put32(req + 24, len);
    send_all(fd, req, sizeof req);
}

/* True if the server has closed fd (what it sent before is drained). */
static int closed_by_server(int fd)
{
    char buf[65536];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0)
            continue;
        return n == 0 || (errno != EAGAIN && errno != EINTR);
    }
}

static int option_flood(const char *addr)
{
    int fd = dial(addr);
    unsigned char greet[18], flags[4], opt[16], rep[20];
    recv_all(fd, greet, sizeof greet);
    put32(flags, 3);
    send_all(fd, flags, sizeof flags);
    /* Lock-step, one option and its reply at a time: a server that closes
     * with our options still unread answers with a RST, and a RST may drop
     * replies it had already queued, so a pipelined flood could not count
     * them exactly. */
    int answered = 0;
    for (int i = 0; i < 1000; i++) {
        put64(opt, UINT64_C(0x49484156454f5054));
        put32(opt + 8, 8);   /* NBD_OPT_STRUCTURED_REPLY */
        put32(opt + 12, 0);
        if (send(fd, opt, sizeof opt, MSG_NOSIGNAL) != (ssize_t)sizeof opt)
            break;   /* closed */
        size_t got = 0;
        while (got < sizeof rep) {
            ssize_t r = recv(fd, rep + got, sizeof rep - got, 0);
            if (r <= 0)
                goto done;
            got += (size_t)r;
        }
        answered++;
    }
done:
    printf("answered %d\n", answered);
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: hostile-conns ADDRESS EXPORT write|read|silent|options N HOLD_S\n");
        return 2;
    }
    const char *addr = argv[1], *name = argv[2], *mode = argv[3];
    int n = atoi(argv[4]), hold = atoi(argv[5]);
    if (n <= 0 || hold < 0 || (strcmp(mode, "write") && strcmp(mode, "read") &&
                               strcmp(mode, "silent") && strcmp(mode, "options")))
        die(0, "bad arguments (mode '%s')", mode);
    signal(SIGPIPE, SIG_IGN);
    if (strcmp(mode, "options") == 0)
        return option_flood(addr);
    int *fds = calloc((size_t)n, sizeof *fds);
    static unsigned char chunk[MiB];
    memset(chunk, 0xa5, sizeof chunk);
    for (int i = 0; i < n; i++) {
        fds[i] = dial(addr);
        if (strcmp(mode, "silent") == 0)
            continue;
        handshake(fds[i], name);
        if (strcmp(mode, "write") == 0) {
            request(fds[i], 1, (uint64_t)i, 32 * MiB);
            for (int m = 0; m < 31; m++)
                send_all(fds[i], chunk, sizeof chunk);
        } else {
            for (int k = 0; k < 4; k++)
                request(fds[i], 0, (uint64_t)k, 32 * MiB);
        }
    }
    printf("ready %d\n", n);
    fflush(stdout);
    sleep((unsigned)hold);
    int closed = 0;
    for (int i = 0; i < n; i++)
        closed += closed_by_server(fds[i]);
    printf("closed %d\n", closed);
    for (int i = 0; i < n; i++)
        close(fds[i]);
    free(fds);
    return 0;
}
