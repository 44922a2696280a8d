/* Shared helpers for the NBD protocol tests (proto-*.c): a tiny case runner,
 * failure reporting, libnbd connection helpers and verifiable data patterns.
 *
 * Every program is run as `PROG SOCKET [CASE...]` against a freshly started
 * server; with no CASE it runs all of them, `PROG --list` prints the names.
 * The first deviation ends the program with status 1 and a message saying
 * which case, what was sent and what came back. Everything here is
 * `static inline` so that each program may use any subset of it. */
#ifndef SWAPCOPY_PROTO_COMMON_H
#define SWAPCOPY_PROTO_COMMON_H

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libnbd.h>

#define MiB (UINT64_C(1024) * 1024)
#define KiB UINT64_C(1024)
#define NBD_MAX_PAYLOAD (32 * MiB)   /* the server's advertised maximum block size */
#ifndef CASE_TIMEOUT_S
#define CASE_TIMEOUT_S 120   /* a case taking longer means something hangs */
#endif

typedef void (*case_fn)(const char *sock);

typedef struct {
    const char *name;
    case_fn fn;
    const char *what;   /* one line: what the case checks */
} TestCase;

/* The running case's name, for failure messages and the watchdog. */
static inline char *current_case(void)
{
    static char name[128] = "setup";
    return name;
}

static inline void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static inline void fail(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "FAIL [%s]: ", current_case());
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    /* _exit: the leak checker would otherwise report the buffers of the
     * failed check as leaks and bury the message. */
    _exit(1);
}

/* Progress lines say what was checked, so a passing log documents the run. */
static inline void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void note(const char *fmt, ...)
{
    va_list ap;
    printf("  [%s] ", current_case());
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static inline void watchdog_fired(int sig)
{
    (void)sig;
    static const char a[] = "FAIL [";
    static const char b[] = "]: no progress within the case time limit; the server "
                            "probably hung (check its log)\n";
    const char *n = current_case();
    ssize_t r = write(2, a, sizeof a - 1);
    r = write(2, n, strlen(n));
    r = write(2, b, sizeof b - 1);
    (void)r;
    _exit(1);
}

static inline int run_cases(int argc, char **argv, const TestCase *cases, size_t ncases)
{
    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < ncases; i++)
            printf("%-28s %s\n", cases[i].name, cases[i].what);
        return 0;
    }
    if (argc < 2) {
        fprintf(stderr, "usage: %s NBD_UNIX_SOCKET [CASE...] | --list\n", argv[0]);
        return 2;
    }
    /* A server closing on us must show up as an error, not kill the test. */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, watchdog_fired);
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *sock = argv[1];
    for (int a = 2; a < argc; a++) {
        bool known = false;
        for (size_t i = 0; i < ncases; i++)
            known |= strcmp(argv[a], cases[i].name) == 0;
        if (!known) {
            fprintf(stderr, "%s: no case named '%s' (see --list)\n", argv[0], argv[a]);
            return 2;
        }
    }
    for (size_t i = 0; i < ncases; i++) {
        bool selected = argc == 2;
        for (int a = 2; a < argc; a++)
            selected |= strcmp(argv[a], cases[i].name) == 0;
        if (!selected)
            continue;
        snprintf(current_case(), 128, "%s", cases[i].name);
        printf("RUN  %s: %s\n", cases[i].name, cases[i].what);
        alarm(CASE_TIMEOUT_S);
        cases[i].fn(sock);
        alarm(0);
        printf("PASS %s\n", cases[i].name);
    }
    return 0;
}

/* ---- libnbd helpers ---------------------------------------------------- */

/* Fail unless a libnbd call succeeded. */
static inline void nbd_ok(int rc, const char *what)
{
    if (rc == -1)
        fail("%s failed: %s (errno %d)", what, nbd_get_error(), nbd_get_errno());
}

static inline struct nbd_handle *handle_new(void)
{
    struct nbd_handle *h = nbd_create();
    if (!h)
        fail("nbd_create: %s", nbd_get_error());
    return h;
}

static inline void handle_connect(struct nbd_handle *h, const char *sock)
{
    if (nbd_connect_unix(h, sock) == -1)
        fail("connecting to the NBD server at %s failed: %s (is the server running?)", sock,
             nbd_get_error());
}

/* A connected handle: export "swap", structured replies as libnbd
 * negotiates them by default. */
static inline struct nbd_handle *connect_default(const char *sock)
{
    struct nbd_handle *h = handle_new();
    nbd_ok(nbd_set_export_name(h, "swap"), "nbd_set_export_name");
    handle_connect(h, sock);
    return h;
}

static inline int64_t export_size(struct nbd_handle *h)
{
    int64_t size = nbd_get_size(h);
    if (size < 0)
        fail("nbd_get_size: %s", nbd_get_error());
    return size;
}

/* Fail unless a request failed with exactly the NBD error want (as errno). */
static inline void expect_error(int rc, int want, const char *what)
{
    if (rc != -1)
        fail("%s: expected the server to fail it with %s (%d), but it succeeded", what,
             strerror(want), want);
    int got = nbd_get_errno();
    if (got != want)
        fail("%s: expected error %s (%d), got %s (%d): %s", what, strerror(want), want,
             strerror(got), got, nbd_get_error());
    note("%s -> %s, as required", what, strerror(want));
}

static inline void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        fail("cannot allocate %zu bytes", n);
    return p;
}

/* ---- data patterns ----------------------------------------------------- */

/* Byte at absolute export offset off of pattern seed: any range of any
 * write can be checked without keeping a copy, and different seeds never
 * agree for long, so misplaced or stale data is detected. */
static inline uint8_t pattern_byte(uint64_t seed, uint64_t off)
{
    uint64_t z = (seed * UINT64_C(0x9e3779b97f4a7c15)) ^ (off >> 3);
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    z ^= z >> 31;
    return (uint8_t)(z >> ((off & 7) * 8));
}

static inline void fill_pattern(void *buf, size_t len, uint64_t off, uint64_t seed)
{
    uint8_t *p = buf;
    for (size_t i = 0; i < len; i++)
        p[i] = pattern_byte(seed, off + i);
}

/* seed 0 means "all zero" (never-written, trimmed or zeroed data). */
static inline void check_pattern(const void *buf, size_t len, uint64_t off, uint64_t seed,
                                 const char *what)
{
    const uint8_t *p = buf;
    for (size_t i = 0; i < len; i++) {
        uint8_t want = seed ? pattern_byte(seed, off + i) : 0;
        if (p[i] != want)
            fail("%s: data mismatch at export offset %" PRIu64 " (byte %zu of the %zu-byte "
                 "range at %" PRIu64 "): expected 0x%02x, got 0x%02x%s", what, off + i, i, len,
                 off, want, p[i], seed ? "" : " (the range should read as zeros)");
    }
}

static inline void write_pattern(struct nbd_handle *h, uint64_t off, size_t len, uint64_t seed)
{
    uint8_t *buf = xmalloc(len);
    fill_pattern(buf, len, off, seed);
    if (nbd_pwrite(h, buf, len, off, 0) == -1)
        fail("writing %zu bytes at offset %" PRIu64 " failed: %s", len, off, nbd_get_error());
    free(buf);
}

static inline void verify_range(struct nbd_handle *h, uint64_t off, size_t len, uint64_t seed,
                                const char *what)
{
    uint8_t *buf = xmalloc(len);
    memset(buf, 0xa5, len);   /* so an unfilled buffer cannot pass for zeros */
    if (nbd_pread(h, buf, len, off, 0) == -1)
        fail("%s: reading %zu bytes at offset %" PRIu64 " failed: %s", what, len, off,
             nbd_get_error());
    check_pattern(buf, len, off, seed, what);
    free(buf);
}

/* ---- canaries: data written before a test's abuse, checked after ------- */

#define CANARY_HEAD_OFF 0
#define CANARY_LEN (1 * MiB)
#define CANARY_SEED_HEAD UINT64_C(0xC0FFEE)
#define CANARY_SEED_TAIL UINT64_C(0xCAFE)

static inline void canary_write(struct nbd_handle *h)
{
    uint64_t size = (uint64_t)export_size(h);
    write_pattern(h, CANARY_HEAD_OFF, CANARY_LEN, CANARY_SEED_HEAD);
    write_pattern(h, size - CANARY_LEN, CANARY_LEN, CANARY_SEED_TAIL);
    nbd_ok(nbd_flush(h, 0), "flush after writing the canaries");
}

static inline void canary_verify(struct nbd_handle *h, const char *when)
{
    uint64_t size = (uint64_t)export_size(h);
    char what[512];
    snprintf(what, sizeof what, "head canary %s", when);
    verify_range(h, CANARY_HEAD_OFF, CANARY_LEN, CANARY_SEED_HEAD, what);
    snprintf(what, sizeof what, "tail canary %s", when);
    verify_range(h, size - CANARY_LEN, CANARY_LEN, CANARY_SEED_TAIL, what);
}

/* A fresh connection must see the canaries: the server survived and what
 * one client did did not leak into the data. */
static inline void canary_verify_fresh(const char *sock, const char *when)
{
    struct nbd_handle *h = connect_default(sock);
    canary_verify(h, when);
    nbd_ok(nbd_shutdown(h, 0), "nbd_shutdown");
    nbd_close(h);
    note("fresh connection reads both canaries intact %s", when);
}

#endif
