/* NBD protocol tests with hand-written bytes on a raw Unix socket: what a
 * real client library would never send. Garbage at each handshake stage,
 * malformed and oversized options, bad request magic, oversized writes,
 * unknown commands, clients that stall or vanish mid-request, and a seeded
 * fuzz loop. The server must answer as proto.md says or close the
 * connection; it must never crash or hang (every wait here is bounded),
 * and data written before the abuse (the canaries, written and checked
 * through libnbd) must be intact afterwards for a fresh client. */
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

#include "proto-common.h"

/* Wire constants, written out here from proto.md rather than shared with
 * the server, so a wrong constant there cannot hide itself. */
#define NBDMAGIC UINT64_C(0x4e42444d41474943)
#define IHAVEOPT UINT64_C(0x49484156454f5054)
#define REPLY_MAGIC UINT64_C(0x0003e889045565a9)
#define REQUEST_MAGIC 0x25609513u
#define SIMPLE_MAGIC 0x67446698u
#define CHUNK_MAGIC 0x668e33efu

#define FLAG_FIXED_NEWSTYLE 1u
#define FLAG_NO_ZEROES 2u

enum {
    OPT_EXPORT_NAME = 1, OPT_ABORT = 2, OPT_LIST = 3, OPT_STARTTLS = 5, OPT_INFO = 6,
    OPT_GO = 7, OPT_STRUCTURED_REPLY = 8, OPT_LIST_META = 9, OPT_SET_META = 10,
};
#define REP_ACK 1u
#define REP_SERVER 2u
#define REP_INFO 3u
#define REP_META_CONTEXT 4u
#define REP_ERR_BIT 0x80000000u
#define REP_ERR_UNSUP (REP_ERR_BIT | 1)
#define REP_ERR_INVALID (REP_ERR_BIT | 3)
#define REP_ERR_UNKNOWN (REP_ERR_BIT | 6)
#define REP_ERR_TOO_BIG (REP_ERR_BIT | 9)
#define INFO_EXPORT 0
#define INFO_NAME 1
#define INFO_BLOCK_SIZE 3

enum { CMD_READ = 0, CMD_WRITE = 1, CMD_DISC = 2, CMD_FLUSH = 3, CMD_TRIM = 4, CMD_CACHE = 5,
       CMD_WRITE_ZEROES = 6, CMD_BLOCK_STATUS = 7 };
#define CHUNK_NONE 0
#define CHUNK_OFFSET_DATA 1
#define CHUNK_OFFSET_HOLE 2
#define CHUNK_BLOCK_STATUS 5
#define CHUNK_ERROR 0x8001
#define CHUNK_ERROR_OFFSET 0x8002
#define CHUNK_FLAG_DONE 1

#define E_INVAL 22u

/* HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES,
 * CAN_MULTI_CONN, SEND_CACHE, SEND_FAST_ZERO: the set the design promises. */
#define EXPECTED_TFLAGS (0x0001 | 0x0004 | 0x0008 | 0x0020 | 0x0040 | 0x0100 | 0x0400 | 0x0800)
#define EXPECT_SIZE (64 * MiB)
#define IO_TIMEOUT_MS 5000

/* ---- byte order --------------------------------------------------------- */

static void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, v >> 16); put16(p + 2, (uint16_t)v); }
static void put64(uint8_t *p, uint64_t v) { put32(p, v >> 32); put32(p + 4, (uint32_t)v); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

static char *hex(const uint8_t *p, size_t n)
{
    static char out[3 * 64 + 8];
    size_t m = n < 64 ? n : 64, o = 0;
    for (size_t i = 0; i < m; i++)
        o += (size_t)snprintf(out + o, sizeof out - o, "%02x%s", p[i], i + 1 < m ? " " : "");
    if (m < n)
        snprintf(out + o, sizeof out - o, " ...");
    return out;
}

/* ---- bounded socket I/O -------------------------------------------------- */

static int raw_connect(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        fail("socket(AF_UNIX): %s", strerror(errno));
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path)
        fail("socket path %s is too long for AF_UNIX", path);
    strcpy(sa.sun_path, path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        fail("connect to %s: %s (is the server still running?)", path, strerror(errno));
    if (fcntl(fd, F_SETFL, O_NONBLOCK) < 0)
        fail("fcntl(O_NONBLOCK): %s", strerror(errno));
    return fd;
}

static int wait_fd(int fd, short events, int timeout_ms)
{
    struct pollfd p = { .fd = fd, .events = events };
    int r;
    do {
        r = poll(&p, 1, timeout_ms);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        fail("poll: %s", strerror(errno));
    return r ? p.revents : 0;
}

/* Read exactly len bytes; any EOF, error or 5 s of silence is a failure. */
static void recv_exact(int fd, void *buf, size_t len, const char *what)
{
    uint8_t *p = buf;
    size_t got = 0;
    while (got < len) {
        if (!wait_fd(fd, POLLIN, IO_TIMEOUT_MS))
            fail("%s: the server sent %zu of %zu expected bytes, then nothing for %d ms "
                 "(hung?)", what, got, len, IO_TIMEOUT_MS);
        ssize_t n = recv(fd, p + got, len - got, 0);
        if (n == 0)
            fail("%s: the server closed the connection after %zu of %zu expected bytes", what,
                 got, len);
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            fail("%s: recv: %s after %zu of %zu bytes", what, strerror(errno), got, len);
        if (n > 0)
            got += (size_t)n;
    }
}

/* Send everything, reading and dropping whatever the server sends in the
 * meantime so neither side can block the other. Returns false if the
 * server closed the connection first (allowed whenever it may close). */
static bool send_draining(int fd, const void *buf, size_t len, const char *what)
{
    const uint8_t *p = buf;
    size_t sent = 0;
    uint8_t sink[65536];
    while (sent < len) {
        int ev = wait_fd(fd, POLLIN | POLLOUT, IO_TIMEOUT_MS);
        if (!ev)
            fail("%s: the server accepted no data and sent none for %d ms after %zu of %zu "
                 "bytes (hung?)", what, IO_TIMEOUT_MS, sent, len);
        if (ev & POLLIN) {
            ssize_t n = recv(fd, sink, sizeof sink, 0);
            if (n == 0 || (n < 0 && errno == ECONNRESET))
                return false;
        }
        if (ev & (POLLOUT | POLLERR | POLLHUP)) {
            ssize_t n = send(fd, p + sent, len - sent, MSG_NOSIGNAL);
            if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
                return false;
            if (n < 0 && errno != EAGAIN && errno != EINTR)
                fail("%s: send: %s", what, strerror(errno));
            if (n > 0)
                sent += (size_t)n;
        }
    }
    return true;
}

/* Send everything; the server must keep reading. */
static void send_all(int fd, const void *buf, size_t len, const char *what)
{
    const uint8_t *p = buf;
    size_t sent = 0;
    while (sent < len) {
        if (!wait_fd(fd, POLLOUT, IO_TIMEOUT_MS))
            fail("%s: the server stopped reading after %zu of %zu bytes (hung?)", what, sent,
                 len);
        ssize_t n = send(fd, p + sent, len - sent, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            fail("%s: send after %zu of %zu bytes: %s (the server closed the connection?)",
                 what, sent, len, strerror(errno));
        if (n > 0)
            sent += (size_t)n;
    }
}

/* The server must close the connection (after sending at most some
 * bytes) within the timeout. Returns how many bytes came before EOF. */
static size_t expect_close(int fd, const char *what)
{
    uint8_t buf[65536];
    size_t total = 0;
    for (;;) {
        if (!wait_fd(fd, POLLIN, IO_TIMEOUT_MS))
            fail("%s: the server neither closed the connection nor sent anything for %d ms "
                 "(%zu bytes before that): it must close it", what, IO_TIMEOUT_MS, total);
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return total;
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            fail("%s: recv: %s", what, strerror(errno));
        if (n > 0)
            total += (size_t)n;
    }
}

/* No more data from us; whatever the server still sends is read, and it
 * must then close. */
static size_t finish_and_expect_close(int fd, const char *what)
{
    if (shutdown(fd, SHUT_WR) < 0 && errno != ENOTCONN)
        fail("shutdown(SHUT_WR): %s", strerror(errno));
    size_t n = expect_close(fd, what);
    close(fd);
    return n;
}

/* ---- handshake ------------------------------------------------------------ */

static uint16_t read_greeting(int fd)
{
    uint8_t g[18];
    recv_exact(fd, g, sizeof g, "greeting");
    if (get64(g) != NBDMAGIC || get64(g + 8) != IHAVEOPT)
        fail("greeting is not NBDMAGIC IHAVEOPT: %s", hex(g, sizeof g));
    return get16(g + 16);
}

static void send_u32(int fd, uint32_t v, const char *what)
{
    uint8_t b[4];
    put32(b, v);
    send_all(fd, b, 4, what);
}

/* Connected, greeted, client flags sent: ready for options. */
static int raw_options_start(const char *sock, uint32_t cflags)
{
    int fd = raw_connect(sock);
    read_greeting(fd);
    send_u32(fd, cflags, "client flags");
    return fd;
}

static void send_option(int fd, uint32_t opt, const void *data, uint32_t len)
{
    uint8_t h[16];
    put64(h, IHAVEOPT);
    put32(h + 8, opt);
    put32(h + 12, len);
    send_all(fd, h, sizeof h, "option header");
    if (len)
        send_all(fd, data, len, "option payload");
}

typedef struct {
    uint32_t opt, type, len;
    uint8_t data[4096 + 64];
} OptReply;

static void read_opt_reply(int fd, uint32_t opt, OptReply *r, const char *what)
{
    uint8_t h[20];
    recv_exact(fd, h, sizeof h, what);
    if (get64(h) != REPLY_MAGIC)
        fail("%s: option reply magic is 0x%016" PRIx64 ", expected 0x%016" PRIx64 " (bytes %s)",
             what, get64(h), REPLY_MAGIC, hex(h, sizeof h));
    r->opt = get32(h + 8);
    r->type = get32(h + 12);
    r->len = get32(h + 16);
    if (r->opt != opt)
        fail("%s: reply is for option %u, the request was option %u", what, r->opt, opt);
    if (r->len > sizeof r->data)
        fail("%s: option reply of %u bytes (type 0x%x) is implausibly long", what, r->len,
             r->type);
    recv_exact(fd, r->data, r->len, what);
}

static const char *rep_name(uint32_t t)
{
    switch (t) {
    case REP_ACK: return "NBD_REP_ACK";
    case REP_SERVER: return "NBD_REP_SERVER";
    case REP_INFO: return "NBD_REP_INFO";
    case REP_META_CONTEXT: return "NBD_REP_META_CONTEXT";
    case REP_ERR_UNSUP: return "NBD_REP_ERR_UNSUP";
    case REP_ERR_INVALID: return "NBD_REP_ERR_INVALID";
    case REP_ERR_UNKNOWN: return "NBD_REP_ERR_UNKNOWN";
    case REP_ERR_TOO_BIG: return "NBD_REP_ERR_TOO_BIG";
    default: return t & REP_ERR_BIT ? "another NBD_REP_ERR_*" : "an unknown reply type";
    }
}

/* Send an option that must be answered by exactly one reply of type want
 * (want == REP_ERR_BIT means: any error). */
static void option_expect(int fd, uint32_t opt, const void *data, uint32_t len, uint32_t want,
                          const char *what)
{
    send_option(fd, opt, data, len);
    OptReply r;
    read_opt_reply(fd, opt, &r, what);
    bool ok = want == REP_ERR_BIT ? (r.type & REP_ERR_BIT) != 0 : r.type == want;
    if (!ok)
        fail("%s: expected %s, got %s (0x%x) with %u payload bytes", what,
             want == REP_ERR_BIT ? "an error reply" : rep_name(want), rep_name(r.type), r.type,
             r.len);
    note("%s -> %s", what, rep_name(r.type));
}

static uint32_t go_payload(uint8_t *p, const char *name, const uint16_t *reqs, uint16_t nreq)
{
    uint32_t n = (uint32_t)strlen(name);
    put32(p, n);
    memcpy(p + 4, name, n);
    put16(p + 4 + n, nreq);
    for (uint16_t i = 0; i < nreq; i++)
        put16(p + 6 + n + 2 * i, reqs[i]);
    return 6 + n + 2u * nreq;
}

static uint32_t meta_payload(uint8_t *p, const char *name, const char *const *q, uint32_t nq)
{
    uint32_t n = (uint32_t)strlen(name), o = 0;
    put32(p, n);
    memcpy(p + 4, name, n);
    o = 4 + n;
    put32(p + o, nq);
    o += 4;
    for (uint32_t i = 0; i < nq; i++) {
        uint32_t l = (uint32_t)strlen(q[i]);
        put32(p + o, l);
        memcpy(p + o + 4, q[i], l);
        o += 4 + l;
    }
    return o;
}

typedef struct {
    uint64_t size;
    uint16_t tflags;
    bool structured;
} Session;

/* Read NBD_OPT_GO/INFO replies up to the final one. */
static uint32_t read_info_replies(int fd, uint32_t opt, Session *s, const char *what)
{
    bool got_export = false;
    for (;;) {
        OptReply r;
        read_opt_reply(fd, opt, &r, what);
        if (r.type == REP_INFO) {
            if (r.len < 2)
                fail("%s: NBD_REP_INFO of %u bytes", what, r.len);
            if (get16(r.data) == INFO_EXPORT) {
                if (r.len != 12)
                    fail("%s: NBD_INFO_EXPORT of %u bytes, must be 12", what, r.len);
                s->size = get64(r.data + 2);
                s->tflags = get16(r.data + 10);
                got_export = true;
            }
            continue;
        }
        if (r.type == REP_ACK && !got_export)
            fail("%s: NBD_REP_ACK without NBD_INFO_EXPORT (the spec requires it)", what);
        return r.type;
    }
}

/* A complete fixed-newstyle handshake ending in NBD_OPT_GO. */
static int raw_go(const char *sock, bool structured, bool meta, Session *s)
{
    int fd = raw_options_start(sock, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    OptReply r;
    s->structured = structured;
    if (structured) {
        send_option(fd, OPT_STRUCTURED_REPLY, NULL, 0);
        read_opt_reply(fd, OPT_STRUCTURED_REPLY, &r, "NBD_OPT_STRUCTURED_REPLY");
        if (r.type != REP_ACK)
            fail("NBD_OPT_STRUCTURED_REPLY answered %s", rep_name(r.type));
    }
    if (meta) {
        uint8_t p[128];
        const char *q[] = { "base:allocation" };
        uint32_t n = meta_payload(p, "swap", q, 1);
        send_option(fd, OPT_SET_META, p, n);
        do
            read_opt_reply(fd, OPT_SET_META, &r, "NBD_OPT_SET_META_CONTEXT");
        while (r.type == REP_META_CONTEXT);
        if (r.type != REP_ACK)
            fail("NBD_OPT_SET_META_CONTEXT ended with %s", rep_name(r.type));
    }
    uint8_t p[64];
    uint32_t n = go_payload(p, "swap", NULL, 0);
    send_option(fd, OPT_GO, p, n);
    uint32_t t = read_info_replies(fd, OPT_GO, s, "NBD_OPT_GO");
    if (t != REP_ACK)
        fail("NBD_OPT_GO for 'swap' answered %s", rep_name(t));
    return fd;
}

/* ---- transmission ------------------------------------------------------- */

static void make_request(uint8_t *h, uint16_t flags, uint16_t type, uint64_t cookie,
                         uint64_t off, uint32_t len)
{
    put32(h, REQUEST_MAGIC);
    put16(h + 4, flags);
    put16(h + 6, type);
    put64(h + 8, cookie);
    put64(h + 16, off);
    put32(h + 24, len);
}

static void send_request(int fd, uint16_t flags, uint16_t type, uint64_t cookie, uint64_t off,
                         uint32_t len)
{
    uint8_t h[28];
    make_request(h, flags, type, cookie, off, len);
    send_all(fd, h, sizeof h, "request header");
}

/* Read the whole reply to cookie, simple or structured. For a READ
 * (data != NULL) the content is reassembled into data and must cover
 * [off, off+len) exactly once on success. Returns the NBD error. */
static uint32_t recv_reply(int fd, const Session *s, uint64_t cookie, uint8_t *data,
                           uint64_t off, uint32_t len, const char *what)
{
    uint8_t m[4];
    recv_exact(fd, m, 4, what);
    uint32_t magic = get32(m);
    if (magic == SIMPLE_MAGIC) {
        uint8_t r[12];
        recv_exact(fd, r, sizeof r, what);
        if (get64(r + 4) != cookie)
            fail("%s: simple reply for cookie 0x%" PRIx64 ", expected 0x%" PRIx64, what,
                 get64(r + 4), cookie);
        uint32_t err = get32(r);
        if (data && s->structured)
            fail("%s: a READ must get a structured reply once they are negotiated", what);
        if (data && err == 0)
            recv_exact(fd, data, len, what);
        return err;
    }
    if (magic != CHUNK_MAGIC)
        fail("%s: reply magic 0x%08x is neither simple nor structured", what, magic);
    if (!s->structured)
        fail("%s: structured reply chunk without NBD_OPT_STRUCTURED_REPLY", what);
    uint8_t *covered = data ? calloc(len ? len : 1, 1) : NULL;
    if (data && !covered)
        fail("out of memory");
    uint32_t err = 0;
    bool first = true;
    for (;;) {
        uint8_t h[16];
        if (!first) {
            recv_exact(fd, m, 4, what);
            if (get32(m) != CHUNK_MAGIC)
                fail("%s: chunk magic 0x%08x in a structured reply", what, get32(m));
        }
        first = false;
        recv_exact(fd, h, sizeof h, what);
        uint16_t flags = get16(h), type = get16(h + 2);
        uint32_t clen = get32(h + 12);
        if (get64(h + 4) != cookie)
            fail("%s: chunk for cookie 0x%" PRIx64 ", expected 0x%" PRIx64, what, get64(h + 4),
                 cookie);
        if (clen > 33 * MiB)
            fail("%s: chunk of %u bytes exceeds any payload the server may send", what, clen);
        uint8_t *body = xmalloc(clen);
        recv_exact(fd, body, clen, what);
        switch (type) {
        case CHUNK_NONE:
            if (clen)
                fail("%s: NBD_REPLY_TYPE_NONE with %u payload bytes", what, clen);
            break;
        case CHUNK_OFFSET_DATA:
        case CHUNK_OFFSET_HOLE: {
            if (!data)
                fail("%s: content chunk in the reply to a non-READ", what);
            if (clen < (type == CHUNK_OFFSET_DATA ? 9u : 12u))
                fail("%s: content chunk of %u bytes is too short", what, clen);
            uint64_t co = get64(body);
            uint32_t cl = type == CHUNK_OFFSET_DATA ? clen - 8 : get32(body + 8);
            if (type == CHUNK_OFFSET_HOLE && clen != 12)
                fail("%s: NBD_REPLY_TYPE_OFFSET_HOLE of %u bytes", what, clen);
            if (co < off || co - off > len || cl > len - (co - off) || cl == 0)
                fail("%s: content chunk [%" PRIu64 ", +%u) outside the request [%" PRIu64
                     ", +%u)", what, co, cl, off, len);
            for (uint32_t i = 0; i < cl; i++) {
                if (covered[co - off + i]++)
                    fail("%s: content chunks overlap at %" PRIu64, what, co + i);
                data[co - off + i] = type == CHUNK_OFFSET_DATA ? body[8 + i] : 0;
            }
            break;
        }
        case CHUNK_BLOCK_STATUS:
            if (clen < 12 || (clen - 4) % 8)
                fail("%s: block status chunk of %u bytes", what, clen);
            break;
        case CHUNK_ERROR:
        case CHUNK_ERROR_OFFSET:
            if (clen < 6 || clen < 6u + get16(body + 4))
                fail("%s: error chunk of %u bytes is malformed", what, clen);
            err = get32(body);
            if (err == 0)
                fail("%s: error chunk with error value 0", what);
            break;
        default:
            fail("%s: unknown structured reply type 0x%x", what, type);
        }
        free(body);
        if (flags & CHUNK_FLAG_DONE)
            break;
    }
    if (data && err == 0)
        for (uint32_t i = 0; i < len; i++)
            if (!covered[i])
                fail("%s: successful READ reply does not cover offset %" PRIu64, what, off + i);
    free(covered);
    return err;
}

/* A READ on a raw connection that must return the given pattern. */
static void raw_read_expect(int fd, const Session *s, uint64_t off, uint32_t len, uint64_t seed,
                            const char *what)
{
    static uint64_t cookie = 0x1000;
    uint8_t *buf = xmalloc(len);
    send_request(fd, 0, CMD_READ, ++cookie, off, len);
    uint32_t err = recv_reply(fd, s, cookie, buf, off, len, what);
    if (err)
        fail("%s: READ of [%" PRIu64 ", +%u) failed with NBD error %u", what, off, len, err);
    check_pattern(buf, len, off, seed, what);
    free(buf);
}

static void raw_canary_read(int fd, const Session *s, const char *when)
{
    char what[256];
    snprintf(what, sizeof what, "head canary over the raw connection %s", when);
    raw_read_expect(fd, s, 0, 64 * KiB, CANARY_SEED_HEAD, what);
}

/* ---- per-case setup ------------------------------------------------------- */

static void setup_canaries(const char *sock)
{
    struct nbd_handle *h = connect_default(sock);
    if ((uint64_t)export_size(h) != EXPECT_SIZE)
        fail("these tests expect a %" PRIu64 "-byte export, the server has %" PRId64,
             EXPECT_SIZE, export_size(h));
    canary_write(h);
    nbd_ok(nbd_shutdown(h, 0), "nbd_shutdown");
    nbd_close(h);
}

/* ---- cases ---------------------------------------------------------------- */

static void case_greeting(const char *sock)
{
    setup_canaries(sock);
    int fd = raw_connect(sock);
    uint16_t f = read_greeting(fd);
    if (!(f & FLAG_FIXED_NEWSTYLE))
        fail("handshake flags 0x%04x lack NBD_FLAG_FIXED_NEWSTYLE", f);
    if (f & ~(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        fail("handshake flags 0x%04x set bits the spec reserves (server MUST NOT)", f);
    note("greeting NBDMAGIC IHAVEOPT, handshake flags 0x%04x", f);
    /* A client that goes away right after the greeting. */
    close(fd);
    canary_verify_fresh(sock, "after a client left right after the greeting");
}

static void case_bad_client_flags(const char *sock)
{
    setup_canaries(sock);
    const uint32_t bad[] = { 0xffffffffu, 0x4, 0x80000000u, FLAG_FIXED_NEWSTYLE | 0x8, 0x100 };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int fd = raw_connect(sock);
        read_greeting(fd);
        send_u32(fd, bad[i], "client flags");
        char what[96];
        snprintf(what, sizeof what, "unknown client flags 0x%08x", bad[i]);
        /* proto.md: the server MUST drop the connection. Keep our side
         * open so the close is the server's doing. */
        size_t n = expect_close(fd, what);
        if (n)
            fail("%s: the server sent %zu bytes instead of just closing", what, n);
        close(fd);
        note("%s: the server closed the connection", what);
    }
    canary_verify_fresh(sock, "after unknown client flags");
}

static void case_bad_option_magic(const char *sock)
{
    setup_canaries(sock);
    struct {
        uint8_t h[16];
        const char *what;
    } v[3];
    memset(v[0].h, 0xff, 16);
    v[0].what = "option header of 16 0xff bytes";
    put64(v[1].h, IHAVEOPT ^ 1);
    put32(v[1].h + 8, OPT_LIST);
    put32(v[1].h + 12, 0);
    v[1].what = "option magic IHAVEOPS";
    for (int i = 0; i < 8; i++)   /* IHAVEOPT in little-endian order */
        v[2].h[i] = (uint8_t)(IHAVEOPT >> (8 * i));
    put32(v[2].h + 8, OPT_LIST);
    put32(v[2].h + 12, 0);
    v[2].what = "byte-swapped option magic";
    for (int i = 0; i < 3; i++) {
        for (int after_list = 0; after_list < 2; after_list++) {
            int fd = raw_options_start(sock, FLAG_FIXED_NEWSTYLE);
            if (after_list) {
                /* One good option first: the bad one comes mid-negotiation. */
                send_option(fd, OPT_LIST, NULL, 0);
                OptReply r;
                do
                    read_opt_reply(fd, OPT_LIST, &r, "NBD_OPT_LIST");
                while (r.type == REP_SERVER);
            }
            send_all(fd, v[i].h, 16, v[i].what);
            size_t n = expect_close(fd, v[i].what);
            close(fd);
            note("%s%s: the server closed the connection (%zu bytes before)", v[i].what,
                 after_list ? " after NBD_OPT_LIST" : "", n);
        }
    }
    canary_verify_fresh(sock, "after bad option magic");
}

static void case_bad_option_length(const char *sock)
{
    setup_canaries(sock);
    uint8_t junk[4096];
    fill_pattern(junk, sizeof junk, 0, 7);
    const uint32_t opts[] = { OPT_GO, OPT_EXPORT_NAME, OPT_LIST, 0x4242 };
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
        int fd = raw_options_start(sock, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        uint8_t h[16];
        put64(h, IHAVEOPT);
        put32(h + 8, opts[i]);
        put32(h + 12, 0xffffffffu);
        send_all(fd, h, sizeof h, "option header with length 0xffffffff");
        send_draining(fd, junk, sizeof junk, "part of a 4 GiB option payload");
        char what[96];
        snprintf(what, sizeof what, "option %u with length 0xffffffff, 4 KiB sent", opts[i]);
        size_t n = finish_and_expect_close(fd, what);
        note("%s, then EOF: the server closed (%zu bytes before)", what, n);
    }

    /* While one client is stuck in a 4 GiB option the others are served. */
    int stuck = raw_options_start(sock, FLAG_FIXED_NEWSTYLE);
    uint8_t h[16];
    put64(h, IHAVEOPT);
    put32(h + 8, OPT_GO);
    put32(h + 12, 0xffffffffu);
    send_all(stuck, h, sizeof h, "option header");
    send_draining(stuck, junk, sizeof junk, "option payload");
    canary_verify_fresh(sock, "while another client is inside a 4 GiB option");
    close(stuck);

    /* A complete option larger than any sane payload (100 KiB) must be
     * answered with an error, and negotiation goes on. */
    const uint32_t big = 100 * 1024;
    uint8_t *p = xmalloc(big);
    fill_pattern(p, big, 0, 8);
    int fd = raw_options_start(sock, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    option_expect(fd, 0x4242, p, big, REP_ERR_BIT, "unknown option 0x4242 with a 100 KiB payload");
    put32(p, big - 6);   /* a GO naming a 100 KiB export */
    put16(p + big - 2, 0);
    option_expect(fd, OPT_GO, p, big, REP_ERR_BIT, "NBD_OPT_GO with a 100 KiB export name");
    put32(p, 0xfffffff0u);
    option_expect(fd, OPT_INFO, p, 64, REP_ERR_BIT, "NBD_OPT_INFO whose name length is 4 GiB");
    Session s;
    uint8_t gp[64];
    send_option(fd, OPT_GO, gp, go_payload(gp, "swap", NULL, 0));
    if (read_info_replies(fd, OPT_GO, &s, "NBD_OPT_GO") != REP_ACK)
        fail("NBD_OPT_GO for 'swap' after errored oversized options failed");
    s.structured = false;
    raw_canary_read(fd, &s, "after oversized options");
    free(p);
    close(fd);
    canary_verify_fresh(sock, "after oversized option lengths");
}

static void case_truncated_option(const char *sock)
{
    setup_canaries(sock);
    uint8_t p[100];
    fill_pattern(p, sizeof p, 0, 9);
    /* Header says 100 bytes, 50 come, then the client stops sending. */
    int fd = raw_options_start(sock, FLAG_FIXED_NEWSTYLE);
    uint8_t h[16];
    put64(h, IHAVEOPT);
    put32(h + 8, OPT_GO);
    put32(h + 12, sizeof p);
    send_all(fd, h, sizeof h, "option header");
    send_all(fd, p, 50, "half an option payload");
    size_t n = finish_and_expect_close(fd, "NBD_OPT_GO with 50 of 100 payload bytes, then EOF");
    note("option payload cut short: the server closed (%zu bytes before)", n);
    /* Half an option header. */
    fd = raw_options_start(sock, FLAG_FIXED_NEWSTYLE);
    send_all(fd, h, 8, "half an option header");
    n = finish_and_expect_close(fd, "8 of 16 option header bytes, then EOF");
    note("option header cut short: the server closed (%zu bytes before)", n);
    /* Half the client flags. */
    fd = raw_connect(sock);
    read_greeting(fd);
    send_all(fd, "\0\0", 2, "half the client flags");
    n = finish_and_expect_close(fd, "2 of 4 client flag bytes, then EOF");
    note("client flags cut short: the server closed (%zu bytes before)", n);
    canary_verify_fresh(sock, "after truncated options");
}

/* Malformed options get an error reply and negotiation continues. */
static void case_option_errors(const char *sock)
{
    setup_canaries(sock);
    int fd = raw_options_start(sock, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    uint8_t p[256];
    fill_pattern(p, sizeof p, 0, 10);
    option_expect(fd, 0x4242, p, 10, REP_ERR_UNSUP, "unknown option 0x4242 (10-byte payload)");
    option_expect(fd, 0x7fffffff, NULL, 0, REP_ERR_UNSUP, "unknown option 0x7fffffff");
    option_expect(fd, OPT_STARTTLS, NULL, 0, REP_ERR_UNSUP, "NBD_OPT_STARTTLS (no TLS)");
    option_expect(fd, OPT_LIST, p, 4, REP_ERR_INVALID, "NBD_OPT_LIST with a 4-byte payload");
    option_expect(fd, OPT_STRUCTURED_REPLY, p, 3, REP_ERR_INVALID,
                  "NBD_OPT_STRUCTURED_REPLY with a 3-byte payload");
    put32(p, 1000);
    option_expect(fd, OPT_GO, p, 10, REP_ERR_INVALID,
                  "NBD_OPT_GO whose name length (1000) exceeds its payload (10)");
    option_expect(fd, OPT_GO, p, 3, REP_ERR_INVALID, "NBD_OPT_GO with a 3-byte payload");
    uint16_t one[] = { INFO_BLOCK_SIZE };
    uint32_t n = go_payload(p, "swap", one, 1);
    put16(p + 4 + 4, 5);   /* says 5 information requests, carries 1 */
    option_expect(fd, OPT_INFO, p, n, REP_ERR_INVALID,
                  "NBD_OPT_INFO announcing 5 information requests but carrying 1");
    n = go_payload(p, "nope", NULL, 0);
    {
        send_option(fd, OPT_INFO, p, n);
        OptReply r;
        read_opt_reply(fd, OPT_INFO, &r, "NBD_OPT_INFO for unknown export 'nope'");
        if (r.type == REP_INFO)
            fail("NBD_OPT_INFO for an unknown export: got NBD_REP_INFO (spec: SHOULD NOT)");
        if (r.type != REP_ERR_UNKNOWN)
            fail("NBD_OPT_INFO for unknown export 'nope': expected NBD_REP_ERR_UNKNOWN, got %s",
                 rep_name(r.type));
        note("NBD_OPT_INFO for unknown export 'nope' -> NBD_REP_ERR_UNKNOWN");
    }
    option_expect(fd, OPT_GO, p, n, REP_ERR_UNKNOWN, "NBD_OPT_GO for unknown export 'nope'");
    const char *q[] = { "base:allocation" };
    n = meta_payload(p, "swap", q, 1);
    option_expect(fd, OPT_SET_META, p, n, REP_ERR_INVALID,
                  "NBD_OPT_SET_META_CONTEXT before NBD_OPT_STRUCTURED_REPLY");
    n = meta_payload(p, "swap", q, 1);
    put32(p + 8 + 4, 200);   /* the query claims 200 bytes; 15 follow */
    option_expect(fd, OPT_LIST_META, p, n, REP_ERR_INVALID,
                  "NBD_OPT_LIST_META_CONTEXT whose query runs past the payload");
    option_expect(fd, OPT_LIST_META, p, 6, REP_ERR_INVALID,
                  "NBD_OPT_LIST_META_CONTEXT with a 6-byte payload");
    /* After all that, the connection negotiates normally. */
    Session s = { 0 };
    n = go_payload(p, "swap", NULL, 0);
    send_option(fd, OPT_GO, p, n);
    if (read_info_replies(fd, OPT_GO, &s, "NBD_OPT_GO after errors") != REP_ACK)
        fail("NBD_OPT_GO for 'swap' after the errors failed");
    note("NBD_OPT_GO for 'swap' succeeds on the same connection after all those errors");
    raw_canary_read(fd, &s, "after option errors");
    close(fd);
    canary_verify_fresh(sock, "after option errors");
}

/* Read META_CONTEXT replies up to the final one; returns their count and
 * whether base:allocation was among them. */
static uint32_t read_meta_replies(int fd, uint32_t opt, int *count, bool *base,
                                  const char *what)
{
    OptReply r;
    *count = 0;
    *base = false;
    for (;;) {
        read_opt_reply(fd, opt, &r, what);
        if (r.type != REP_META_CONTEXT)
            return r.type;
        (*count)++;
        if (r.len < 4)
            fail("%s: NBD_REP_META_CONTEXT of %u bytes", what, r.len);
        if (r.len - 4 == 15 && memcmp(r.data + 4, "base:allocation", 15) == 0)
            *base = true;
        else
            fail("%s: unexpected context '%.*s'", what, (int)(r.len - 4), r.data + 4);
    }
}

static void case_meta_context_queries(const char *sock)
{
    setup_canaries(sock);
    int fd = raw_options_start(sock, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    option_expect(fd, OPT_STRUCTURED_REPLY, NULL, 0, REP_ACK, "NBD_OPT_STRUCTURED_REPLY");
    uint8_t p[512];
    int count;
    bool base;
    struct {
        uint32_t opt;
        const char *q[3];
        uint32_t nq;
        int want;   /* 1: exactly base:allocation, 0: no context */
        const char *what;
    } t[] = {
        { OPT_LIST_META, { 0 }, 0, 1, "LIST_META_CONTEXT with no query lists everything" },
        { OPT_LIST_META, { "base:" }, 1, 1, "LIST_META_CONTEXT 'base:' (wildcard, MUST)" },
        { OPT_LIST_META, { "x-nope:foo" }, 1, 0,
          "LIST_META_CONTEXT in an unknown namespace (ignored)" },
        { OPT_SET_META, { "base:allocation", "x-nope:foo", "base:nope" }, 3, 1,
          "SET_META_CONTEXT base:allocation + unknown ones" },
        { OPT_SET_META, { 0 }, 0, 0, "SET_META_CONTEXT with no query selects nothing" },
        { OPT_SET_META, { "base:" }, 1, 0,
          "SET_META_CONTEXT 'base:' (the server MUST ignore that form)" },
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        uint32_t n = meta_payload(p, "swap", t[i].q, t[i].nq);
        send_option(fd, t[i].opt, p, n);
        uint32_t end = read_meta_replies(fd, t[i].opt, &count, &base, t[i].what);
        if (end != REP_ACK)
            fail("%s: ended with %s instead of NBD_REP_ACK", t[i].what, rep_name(end));
        if (t[i].want ? (count != 1 || !base) : count != 0)
            fail("%s: expected %s, got %d context(s)", t[i].what,
                 t[i].want ? "exactly base:allocation" : "no context", count);
        note("%s: %d context(s), then NBD_REP_ACK", t[i].what, count);
    }
    uint32_t n = meta_payload(p, "nope", (const char *[]){ "base:allocation" }, 1);
    option_expect(fd, OPT_SET_META, p, n, REP_ERR_UNKNOWN,
                  "SET_META_CONTEXT for unknown export 'nope'");
    close(fd);
    canary_verify_fresh(sock, "after meta context queries");
}

static void case_info_reply(const char *sock)
{
    setup_canaries(sock);
    int fd = raw_options_start(sock, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    uint8_t p[64];
    uint16_t reqs[] = { INFO_BLOCK_SIZE, INFO_NAME, 0x7777 /* unknown: ignored */ };
    uint32_t n = go_payload(p, "swap", reqs, 3);
    send_option(fd, OPT_INFO, p, n);
    bool got_export = false, got_bs = false;
    for (;;) {
        OptReply r;
        read_opt_reply(fd, OPT_INFO, &r, "NBD_OPT_INFO");
        if (r.type == REP_ACK)
            break;
        if (r.type != REP_INFO)
            fail("NBD_OPT_INFO for 'swap' answered %s", rep_name(r.type));
        uint16_t it = get16(r.data);
        if (it == INFO_EXPORT) {
            if (r.len != 12)
                fail("NBD_INFO_EXPORT of %u bytes", r.len);
            uint64_t size = get64(r.data + 2);
            uint16_t tf = get16(r.data + 10);
            if (size != EXPECT_SIZE)
                fail("NBD_INFO_EXPORT size %" PRIu64 ", expected %" PRIu64, size, EXPECT_SIZE);
            if (tf != EXPECTED_TFLAGS)
                fail("transmission flags 0x%04x, expected exactly 0x%04x (HAS_FLAGS SEND_FLUSH "
                     "SEND_FUA SEND_TRIM SEND_WRITE_ZEROES CAN_MULTI_CONN SEND_CACHE "
                     "SEND_FAST_ZERO)", tf, EXPECTED_TFLAGS);
            note("NBD_INFO_EXPORT: size %" PRIu64 ", transmission flags 0x%04x", size, tf);
            got_export = true;
        } else if (it == INFO_BLOCK_SIZE) {
            if (r.len != 14)
                fail("NBD_INFO_BLOCK_SIZE of %u bytes", r.len);
            uint32_t mn = get32(r.data + 2), pr = get32(r.data + 6), mx = get32(r.data + 10);
            if (mn != 1 || pr != 4096 || mx != NBD_MAX_PAYLOAD)
                fail("NBD_INFO_BLOCK_SIZE %u/%u/%u, expected 1/4096/%" PRIu64, mn, pr, mx,
                     NBD_MAX_PAYLOAD);
            note("NBD_INFO_BLOCK_SIZE: min %u, preferred %u, max %u", mn, pr, mx);
            got_bs = true;
        } else if (it == INFO_NAME) {
            if (r.len != 2 + 4 || memcmp(r.data + 2, "swap", 4) != 0)
                fail("NBD_INFO_NAME '%.*s', expected 'swap'", (int)(r.len - 2), r.data + 2);
            note("NBD_INFO_NAME: 'swap'");
        } else {
            fail("NBD_REP_INFO of unrequested type %u (0x7777 is not a defined type)", it);
        }
    }
    if (!got_export || !got_bs)
        fail("NBD_OPT_INFO: NBD_INFO_EXPORT %s, NBD_INFO_BLOCK_SIZE %s",
             got_export ? "sent" : "MISSING", got_bs ? "sent" : "MISSING");
    /* GO with no information requests: after NBD_REP_ACK no padding may
     * follow, so a READ reply must come next on the wire. */
    Session s = { 0 };
    n = go_payload(p, "", NULL, 0);
    send_option(fd, OPT_GO, p, n);
    if (read_info_replies(fd, OPT_GO, &s, "NBD_OPT_GO \"\"") != REP_ACK)
        fail("NBD_OPT_GO for the default export failed");
    if (s.size != EXPECT_SIZE || s.tflags != EXPECTED_TFLAGS)
        fail("NBD_OPT_GO: size %" PRIu64 " flags 0x%04x differ from NBD_OPT_INFO", s.size,
             s.tflags);
    raw_canary_read(fd, &s, "right after NBD_OPT_GO (no padding allowed)");
    note("NBD_OPT_GO \"\" agrees with NBD_OPT_INFO; transmission follows the ACK directly");
    close(fd);
    canary_verify_fresh(sock, "after NBD_OPT_INFO/GO");
}

static void export_name_raw(const char *sock, uint32_t cflags, const char *name)
{
    int fd = raw_options_start(sock, cflags);
    send_option(fd, OPT_EXPORT_NAME, name, (uint32_t)strlen(name));
    uint8_t r[10 + 124];
    size_t want = cflags & FLAG_NO_ZEROES ? 10 : sizeof r;
    recv_exact(fd, r, want, "NBD_OPT_EXPORT_NAME reply");
    uint64_t size = get64(r);
    uint16_t tf = get16(r + 8);
    if (size != EXPECT_SIZE || tf != EXPECTED_TFLAGS)
        fail("NBD_OPT_EXPORT_NAME '%s': size %" PRIu64 " flags 0x%04x, expected %" PRIu64
             " and 0x%04x", name, size, tf, EXPECT_SIZE, EXPECTED_TFLAGS);
    for (size_t i = 10; i < want; i++)
        if (r[i])
            fail("NBD_OPT_EXPORT_NAME: padding byte %zu is 0x%02x, must be zero", i - 10, r[i]);
    Session s = { .size = size };
    raw_canary_read(fd, &s, "after NBD_OPT_EXPORT_NAME");
    close(fd);
    note("NBD_OPT_EXPORT_NAME '%s' with client flags 0x%x: size, flags, %zu-byte reply, "
         "then transmission", name, cflags, want);
}

static void case_export_name_raw(const char *sock)
{
    setup_canaries(sock);
    export_name_raw(sock, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, "swap");
    export_name_raw(sock, FLAG_FIXED_NEWSTYLE, "swap");
    export_name_raw(sock, 0, "");
    export_name_raw(sock, FLAG_NO_ZEROES, "");
    int fd = raw_options_start(sock, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    send_option(fd, OPT_EXPORT_NAME, "nope", 4);
    size_t n = expect_close(fd, "NBD_OPT_EXPORT_NAME for unknown export 'nope'");
    if (n)
        fail("NBD_OPT_EXPORT_NAME for an unknown export: %zu bytes before closing, expected "
             "none (there is no error reply for it)", n);
    close(fd);
    note("NBD_OPT_EXPORT_NAME for an unknown export: the server closed without a reply");
    canary_verify_fresh(sock, "after NBD_OPT_EXPORT_NAME");
}

static void case_abort_raw(const char *sock)
{
    setup_canaries(sock);
    for (int with_data = 0; with_data < 2; with_data++) {
        int fd = raw_options_start(sock, FLAG_FIXED_NEWSTYLE);
        const char *what = with_data ? "NBD_OPT_ABORT with a 5-byte payload (to be ignored)"
                                     : "NBD_OPT_ABORT";
        option_expect(fd, OPT_ABORT, "hello", with_data ? 5 : 0, REP_ACK, what);
        size_t n = expect_close(fd, what);
        if (n)
            fail("%s: %zu bytes after the ACK", what, n);
        close(fd);
        note("%s: NBD_REP_ACK, then the server closed", what);
    }
    /* Abort sent, then the client leaves without waiting for the ACK. */
    int fd = raw_options_start(sock, FLAG_FIXED_NEWSTYLE);
    send_option(fd, OPT_ABORT, NULL, 0);
    close(fd);
    canary_verify_fresh(sock, "after NBD_OPT_ABORT");
}

static void case_bad_request_magic(const char *sock)
{
    setup_canaries(sock);
    const uint32_t magics[] = { 0x12560953u /* historic */, 0x21e41c71u /* extended */, 0,
                                0xffffffffu };
    for (int structured = 0; structured < 2; structured++) {
        for (size_t i = 0; i < sizeof magics / sizeof magics[0]; i++) {
            Session s;
            int fd = raw_go(sock, structured, false, &s);
            raw_canary_read(fd, &s, "before a bad request");
            uint8_t h[28];
            make_request(h, 0, CMD_WRITE, 1, 0, 4096);   /* a WRITE over the canary */
            put32(h, magics[i]);
            uint8_t payload[4096];
            fill_pattern(payload, sizeof payload, 0, 11);
            send_all(fd, h, sizeof h, "request with bad magic");
            send_draining(fd, payload, sizeof payload, "its payload");
            char what[96];
            snprintf(what, sizeof what, "request magic 0x%08x%s", magics[i],
                     structured ? " (structured replies)" : "");
            size_t n = expect_close(fd, what);
            close(fd);
            note("%s: the server closed the connection (%zu bytes before)", what, n);
        }
    }
    canary_verify_fresh(sock, "after bad request magic");
}

static void case_oversized_write(const char *sock)
{
    setup_canaries(sock);
    const uint32_t lens[] = { 33 * MiB, NBD_MAX_PAYLOAD + 1 };
    uint8_t *payload = xmalloc(33 * MiB);
    fill_pattern(payload, 33 * MiB, 0, 12);
    for (int structured = 0; structured < 2; structured++) {
        Session s;
        int fd = raw_go(sock, structured, false, &s);
        for (size_t i = 0; i < 2; i++) {
            char what[128];
            snprintf(what, sizeof what, "WRITE of %u bytes at offset 0 with its payload%s",
                     lens[i], structured ? " (structured replies)" : "");
            send_request(fd, 0, CMD_WRITE, 77 + i, 0, lens[i]);
            /* The server consumes the payload before answering. */
            send_all(fd, payload, lens[i], what);
            uint32_t err = recv_reply(fd, &s, 77 + i, NULL, 0, 0, what);
            if (err != E_INVAL)
                fail("%s: expected NBD_EINVAL (22), got %u", what, err);
            note("%s -> EINVAL", what);
            /* The next request is parsed in step: the stream survived. */
            raw_canary_read(fd, &s, "after an oversized WRITE");
        }
        close(fd);
    }
    free(payload);
    canary_verify_fresh(sock, "after oversized WRITEs");
}

static void case_unknown_command(const char *sock)
{
    setup_canaries(sock);
    const uint16_t types[] = { 8, 9, 100, 0x7fff, 0xffff };
    for (int structured = 0; structured < 2; structured++) {
        Session s;
        int fd = raw_go(sock, structured, false, &s);
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
            char what[96];
            snprintf(what, sizeof what, "unknown command %u%s", types[i],
                     structured ? " (structured replies)" : "");
            send_request(fd, 0, types[i], 500 + i, 0, 4096);
            uint32_t err = recv_reply(fd, &s, 500 + i, NULL, 0, 0, what);
            if (err != E_INVAL)
                fail("%s: expected NBD_EINVAL (22), got %u", what, err);
            note("%s -> EINVAL", what);
            raw_canary_read(fd, &s, "after an unknown command");
        }
        /* FLUSH's offset and length are reserved and MUST be zero. */
        send_request(fd, 0, CMD_FLUSH, 600, 4096, 4096);
        uint32_t err = recv_reply(fd, &s, 600, NULL, 0, 0, "FLUSH with offset/length 4096");
        note("FLUSH with nonzero offset and length -> error %u (either is acceptable)", err);
        raw_canary_read(fd, &s, "after a FLUSH with offset and length");
        close(fd);
    }
    canary_verify_fresh(sock, "after unknown commands");
}

/* A structured READ reply covers the request exactly, with both written
 * and never-written data in it. */
static void case_structured_read(const char *sock)
{
    setup_canaries(sock);
    Session s;
    int fd = raw_go(sock, true, true, &s);
    /* [1M-8K, 1M) is canary data, [1M, 1M+8K) never written. */
    uint8_t *buf = xmalloc(16 * KiB);
    send_request(fd, 0, CMD_READ, 900, CANARY_LEN - 8 * KiB, 16 * KiB);
    uint32_t err = recv_reply(fd, &s, 900, buf, CANARY_LEN - 8 * KiB, 16 * KiB,
                              "structured READ across data and hole");
    if (err)
        fail("structured READ across data and a hole failed: %u", err);
    check_pattern(buf, 8 * KiB, CANARY_LEN - 8 * KiB, CANARY_SEED_HEAD, "data part");
    check_pattern(buf + 8 * KiB, 8 * KiB, CANARY_LEN, 0, "hole part");
    note("structured READ: chunks cover the request exactly once, data and zeros right");
    free(buf);
    /* Errors as error chunks, and the connection stays in step. */
    send_request(fd, 0, CMD_READ, 901, EXPECT_SIZE, 4096);
    uint8_t b[4096];
    err = recv_reply(fd, &s, 901, b, EXPECT_SIZE, 4096, "structured READ past the end");
    if (err != E_INVAL)
        fail("structured READ past the end: expected EINVAL (22), got %u", err);
    note("structured READ past the end -> EINVAL error chunk");
    send_request(fd, 0, CMD_BLOCK_STATUS, 902, 0, 4096);
    err = recv_reply(fd, &s, 902, NULL, 0, 0, "BLOCK_STATUS");
    if (err)
        fail("BLOCK_STATUS of [0, 4096) failed: %u", err);
    raw_canary_read(fd, &s, "after structured replies");
    close(fd);
    canary_verify_fresh(sock, "after structured reads");
}

/* Clients that vanish in the middle of something. */
static void case_disconnect_mid_request(const char *sock)
{
    setup_canaries(sock);
    /* A written range that a cut-off WRITE must not touch. */
    struct nbd_handle *h = connect_default(sock);
    write_pattern(h, 2 * MiB, 1 * MiB, 13);
    nbd_ok(nbd_shutdown(h, 0), "nbd_shutdown");
    nbd_close(h);

    Session s;
    int fd = raw_go(sock, false, false, &s);
    uint8_t req[28];
    make_request(req, 0, CMD_READ, 1, 0, 4096);
    send_all(fd, req, 14, "half a request header");
    close(fd);
    note("client left after half a request header");

    uint8_t payload[1000];
    fill_pattern(payload, sizeof payload, 2 * MiB, 14);
    for (int structured = 0; structured < 2; structured++) {
        fd = raw_go(sock, structured, false, &s);
        send_request(fd, 0, CMD_WRITE, 2, 2 * MiB, 1 * MiB);
        send_all(fd, payload, sizeof payload, "1000 of 1 MiB of write payload");
        close(fd);
    }
    note("client left 1000 bytes into a 1 MiB WRITE payload (twice)");

    fd = raw_go(sock, false, false, &s);
    send_request(fd, 0, CMD_WRITE, 3, 2 * MiB, 0xffffffffu);
    send_all(fd, payload, sizeof payload, "start of a 4 GiB write payload");
    close(fd);
    note("client left 1000 bytes into a 4 GiB WRITE payload");

    /* Left with an abortive close (RST) while the server is replying. */
    fd = raw_go(sock, false, false, &s);
    for (int i = 0; i < 4; i++)
        send_request(fd, 0, CMD_READ, 10 + (uint64_t)i, 0, NBD_MAX_PAYLOAD);
    struct linger lg = { .l_onoff = 1, .l_linger = 0 };
    if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) < 0)
        fail("setsockopt(SO_LINGER): %s", strerror(errno));
    close(fd);
    note("client reset the connection with four 32 MiB READs unanswered");

    fd = raw_go(sock, true, true, &s);
    for (int i = 0; i < 32; i++)
        send_request(fd, 0, i % 2 ? CMD_BLOCK_STATUS : CMD_READ, 20 + (uint64_t)i,
                     (uint64_t)i * MiB, 1 * MiB);
    close(fd);
    note("client left with 32 READ/BLOCK_STATUS requests unanswered");

    h = connect_default(sock);
    canary_verify(h, "after clients vanished mid-request");
    verify_range(h, 2 * MiB, 1 * MiB, 13, "range targeted by cut-off WRITEs (must be unchanged)");
    nbd_ok(nbd_shutdown(h, 0), "nbd_shutdown");
    nbd_close(h);
    note("cut-off WRITEs changed nothing");
    canary_verify_fresh(sock, "after clients vanished mid-request");
}

/* Clients stuck at each stage do not hold up anyone else. */
static void case_stalled_clients(const char *sock)
{
    setup_canaries(sock);
    int silent = raw_connect(sock);   /* never reads the greeting */
    int no_flags = raw_connect(sock);
    read_greeting(no_flags);
    int mid_option = raw_options_start(sock, FLAG_FIXED_NEWSTYLE);
    uint8_t h[16];
    put64(h, IHAVEOPT);
    put32(h + 8, OPT_GO);
    put32(h + 12, 1000);
    send_all(mid_option, h, sizeof h, "option header");
    Session s;
    int mid_write = raw_go(sock, false, false, &s);
    send_request(mid_write, 0, CMD_WRITE, 1, 4 * MiB, 1 * MiB);
    uint8_t payload[100] = { 0 };
    send_all(mid_write, payload, sizeof payload, "start of a write payload");
    int not_reading = raw_go(sock, false, false, &s);
    for (int i = 0; i < 8; i++)   /* 256 MiB of replies nobody reads */
        send_request(not_reading, 0, CMD_READ, 50 + (uint64_t)i, 0, NBD_MAX_PAYLOAD);
    note("5 stalled clients: silent, no client flags, mid-option, mid-WRITE, not reading");

    struct nbd_handle *nh = connect_default(sock);
    canary_verify(nh, "while 5 clients are stalled");
    write_pattern(nh, 8 * MiB, 1 * MiB, 15);
    verify_range(nh, 8 * MiB, 1 * MiB, 15, "write while 5 clients are stalled");
    nbd_ok(nbd_shutdown(nh, 0), "nbd_shutdown");
    nbd_close(nh);
    note("a new client is served normally meanwhile");
    close(silent);
    close(no_flags);
    close(mid_option);
    close(mid_write);
    close(not_reading);
    canary_verify_fresh(sock, "after the stalled clients left");
}

/* ---- fuzzing -------------------------------------------------------------- */

#define FUZZ_MAX_ITER 4000
#define FUZZ_SECONDS 5.0

static uint64_t rng;

static uint64_t rnd(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * UINT64_C(0x2545f4914f6cdd1d);
}

static uint64_t rnd_below(uint64_t n)
{
    return n ? rnd() % n : 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t fuzz_seed(void)
{
    const char *e = getenv("PROTO_FUZZ_SEED");
    return e && *e ? strtoull(e, NULL, 0) : UINT64_C(0x5eed5eed);
}

typedef struct {
    uint8_t *b;
    size_t n, cap;
} Buf;

static void buf_put(Buf *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        b->b = realloc(b->b, b->cap);
        if (!b->b)
            fail("out of memory");
    }
    memcpy(b->b + b->n, p, n);
    b->n += n;
}

static void buf_random(Buf *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)rnd();
        buf_put(b, &c, 1);
    }
}

static void mutate(Buf *b, size_t from)
{
    if (b->n <= from)
        return;
    int flips = 1 + (int)rnd_below(3);
    for (int i = 0; i < flips; i++)
        b->b[from + rnd_below(b->n - from)] ^= (uint8_t)(1 + rnd_below(255));
}

/* One option, plausible enough to get past the first checks. */
static void fuzz_option(Buf *b)
{
    static const uint32_t known[] = { OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS,
                                      OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY, OPT_LIST_META,
                                      OPT_SET_META, 11, 0, 0x80000001u };
    uint32_t opt = rnd_below(4) ? known[rnd_below(sizeof known / sizeof known[0])]
                                : (uint32_t)rnd();
    uint8_t p[300];
    uint32_t n;
    const char *names[] = { "swap", "", "nope", "swapswapswap" };
    const char *name = names[rnd_below(4)];
    if (opt == OPT_INFO || opt == OPT_GO) {
        uint16_t reqs[4] = { (uint16_t)rnd_below(5), (uint16_t)rnd_below(5), (uint16_t)rnd(),
                             3 };
        n = go_payload(p, name, reqs, (uint16_t)rnd_below(5));
    } else if (opt == OPT_LIST_META || opt == OPT_SET_META) {
        const char *q[] = { "base:allocation", "base:", "x-y:z", "" };
        n = meta_payload(p, name, q, (uint32_t)rnd_below(5));
    } else if (opt == OPT_EXPORT_NAME) {
        n = (uint32_t)strlen(name);
        memcpy(p, name, n);
    } else {
        n = (uint32_t)rnd_below(40);
        for (uint32_t i = 0; i < n; i++)
            p[i] = (uint8_t)rnd();
    }
    uint32_t declared = n;
    switch (rnd_below(10)) {
    case 0: declared = (uint32_t)rnd(); break;
    case 1: declared = n + (uint32_t)rnd_below(16) - 8; break;
    default: break;
    }
    uint8_t h[16];
    put64(h, rnd_below(20) ? IHAVEOPT : rnd());
    put32(h + 8, opt);
    put32(h + 12, declared);
    buf_put(b, h, sizeof h);
    buf_put(b, p, n);
}

/* Feed one input, stop sending, then the server must finish and close.
 * Returns how many bytes the server answered with. */
static size_t fuzz_feed(int fd, Buf *in, long iter, const char *stage)
{
    char what[320];
    snprintf(what, sizeof what, "%s fuzz input #%ld (seed 0x%" PRIx64 ", %zu bytes: %s)", stage,
             iter, fuzz_seed(), in->n, hex(in->b, in->n));
    send_draining(fd, in->b, in->n, what);
    return finish_and_expect_close(fd, what);
}

static void case_fuzz_handshake(const char *sock)
{
    setup_canaries(sock);
    rng = fuzz_seed() * UINT64_C(0x9e3779b97f4a7c15) + 1;
    double end = now_s() + FUZZ_SECONDS;
    long iter;
    size_t bytes = 0, answered = 0;
    Buf in = { 0 };
    for (iter = 0; iter < FUZZ_MAX_ITER && now_s() < end; iter++) {
        in.n = 0;
        int mode = (int)rnd_below(5);
        int fd = raw_connect(sock);
        if (mode != 0)
            read_greeting(fd);
        if (mode <= 1) {
            buf_random(&in, rnd_below(64));
        } else {
            static const uint32_t flags[] = { 0, 1, 2, 3, 4, 0xffffffffu };
            uint8_t f[4];
            put32(f, rnd_below(8) ? flags[rnd_below(4)] : flags[rnd_below(6)]);
            buf_put(&in, f, 4);
            int nopt = 1 + (int)rnd_below(4);
            for (int i = 0; i < nopt; i++)
                fuzz_option(&in);
            if (mode == 3)
                mutate(&in, 4);
            if (mode == 4)
                in.n = rnd_below(in.n + 1);   /* cut anywhere */
        }
        bytes += in.n;
        answered += fuzz_feed(fd, &in, iter, "handshake");
    }
    free(in.b);
    note("%ld random handshakes (%zu bytes sent, %zu answered, seed 0x%" PRIx64 "): every one "
         "ended with the server closing the connection", iter, bytes, answered, fuzz_seed());
    canary_verify_fresh(sock, "after handshake fuzzing");
}

/* Requests never aim at the canaries: whatever the server accepts must
 * leave them alone, so any change there is the server's fault. */
static void sanitize_request(uint8_t *h)
{
    if (get32(h) != REQUEST_MAGIC)
        return;
    uint16_t type = get16(h + 6);
    uint64_t off = get64(h + 16);
    uint32_t len = get32(h + 24);
    bool writes = type == CMD_WRITE || type == CMD_TRIM || type == CMD_WRITE_ZEROES;
    bool in_range = off < EXPECT_SIZE && len <= EXPECT_SIZE - off;
    bool touches = off < CANARY_LEN || off + len > EXPECT_SIZE - CANARY_LEN;
    if (writes && in_range && touches) {
        /* Move it to [1 MiB, 2 MiB) and keep it short of the tail canary. */
        put64(h + 16, CANARY_LEN + off % MiB);
        if (len > EXPECT_SIZE - 2 * CANARY_LEN - MiB)
            put32(h + 24, 4096);
    }
}

static void fuzz_request(Buf *b, size_t *hdr_pos, int *nhdr)
{
    /* Mostly valid flags, so that requests get past validation. */
    uint64_t fr = rnd_below(10);
    uint16_t flags = fr < 5 ? 0 : fr < 8 ? (uint16_t)(1u << rnd_below(5)) : (uint16_t)rnd();
    uint16_t type = rnd_below(10) < 8 ? (uint16_t)rnd_below(8) : (uint16_t)rnd();
    uint64_t off;
    switch (rnd_below(6)) {
    case 0: off = EXPECT_SIZE - rnd_below(8192); break;
    case 1: off = EXPECT_SIZE + rnd_below(1 << 20); break;
    case 2: off = rnd(); break;
    case 3: off = UINT64_MAX - rnd_below(65536); break;
    default: off = CANARY_LEN + rnd_below(EXPECT_SIZE - 2 * CANARY_LEN); break;
    }
    uint32_t len;
    switch (rnd_below(10)) {
    case 0: len = 0; break;
    case 1: len = NBD_MAX_PAYLOAD + 1 + (uint32_t)rnd_below(1 << 20); break;
    case 2: len = (uint32_t)rnd(); break;
    default: len = 1 + (uint32_t)rnd_below(65536); break;
    }
    uint8_t h[28];
    make_request(h, flags, type, rnd(), off, len);
    sanitize_request(h);
    len = get32(h + 24);
    hdr_pos[(*nhdr)++] = b->n;
    buf_put(b, h, sizeof h);
    if (type == CMD_WRITE) {
        /* Usually the whole payload, sometimes less (the stream desyncs). */
        size_t n = len <= 65536 && rnd_below(5) ? len : rnd_below(65536);
        uint8_t chunk[4096];
        fill_pattern(chunk, sizeof chunk, 0, 16);
        while (n) {
            size_t k = n < sizeof chunk ? n : sizeof chunk;
            buf_put(b, chunk, k);
            n -= k;
        }
    }
}

static void case_fuzz_transmission(const char *sock)
{
    setup_canaries(sock);
    rng = (fuzz_seed() ^ UINT64_C(0xabcdef)) * UINT64_C(0x9e3779b97f4a7c15) + 1;
    double end = now_s() + FUZZ_SECONDS;
    long iter;
    size_t bytes = 0, answered = 0;
    Buf in = { 0 };
    for (iter = 0; iter < FUZZ_MAX_ITER && now_s() < end; iter++) {
        in.n = 0;
        bool structured = rnd() & 1, meta = structured && (rnd() & 1);
        Session s;
        int fd = raw_go(sock, structured, meta, &s);
        size_t hdr_pos[8];
        int nhdr = 0;
        int mode = (int)rnd_below(3);
        if (mode == 0) {
            buf_random(&in, 1 + rnd_below(64));
        } else {
            int nreq = 1 + (int)rnd_below(8);
            for (int i = 0; i < nreq; i++)
                fuzz_request(&in, hdr_pos, &nhdr);
            if (mode == 2) {
                mutate(&in, 0);
                for (int i = 0; i < nhdr; i++)
                    sanitize_request(in.b + hdr_pos[i]);
            }
        }
        bytes += in.n;
        answered += fuzz_feed(fd, &in, iter, structured ? "transmission (structured)"
                                                        : "transmission (simple)");
    }
    free(in.b);
    note("%ld random request streams (%zu bytes sent, %zu answered, seed 0x%" PRIx64 "): every "
         "one ended with the server closing the connection", iter, bytes, answered, fuzz_seed());
    canary_verify_fresh(sock, "after transmission fuzzing");
}

static const TestCase cases[] = {
    { "greeting", case_greeting, "NBDMAGIC IHAVEOPT and valid handshake flags" },
    { "bad-client-flags", case_bad_client_flags, "unknown client flags: server closes" },
    { "bad-option-magic", case_bad_option_magic, "garbage instead of IHAVEOPT: server closes" },
    { "bad-option-length", case_bad_option_length,
      "4 GiB option lengths; 100 KiB options get errors" },
    { "truncated-option", case_truncated_option, "client flags/option cut short, then EOF" },
    { "option-errors", case_option_errors, "malformed options: error replies, then GO works" },
    { "meta-context-queries", case_meta_context_queries,
      "LIST/SET_META_CONTEXT query semantics" },
    { "info-reply", case_info_reply, "NBD_OPT_INFO/GO reply contents, no padding after GO" },
    { "export-name-raw", case_export_name_raw, "NBD_OPT_EXPORT_NAME reply bytes and padding" },
    { "abort-raw", case_abort_raw, "NBD_OPT_ABORT: ACK then close" },
    { "bad-request-magic", case_bad_request_magic, "bad request magic: server closes" },
    { "oversized-write", case_oversized_write, "33 MiB WRITE with payload: EINVAL, in step" },
    { "unknown-command", case_unknown_command, "unknown command types: EINVAL, in step" },
    { "structured-read", case_structured_read, "structured READ chunks cover exactly" },
    { "disconnect-mid-request", case_disconnect_mid_request,
      "clients vanish mid-header, mid-payload, with replies due" },
    { "stalled-clients", case_stalled_clients, "stuck clients do not block others" },
    { "fuzz-handshake", case_fuzz_handshake, "seeded random handshakes for ~5 s" },
    { "fuzz-transmission", case_fuzz_transmission, "seeded random request streams for ~5 s" },
};

int main(int argc, char **argv)
{
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
