/* NBD transmission tests through libnbd: READ, WRITE, FLUSH, TRIM,
 * WRITE_ZEROES (with NO_HOLE, FAST_ZERO, FUA), CACHE, every result checked
 * against the data that must be there; many requests in flight on one
 * connection; two connections sharing the export; 32 MiB requests. */
#include <pthread.h>

#include "proto-common.h"

static void close_handle(struct nbd_handle *h)
{
    nbd_ok(nbd_shutdown(h, 0), "nbd_shutdown");
    nbd_close(h);
}

typedef struct {
    uint64_t off;
    size_t len;
    uint64_t seed;
} Range;

static bool overlaps_any(const Range *r, size_t n, uint64_t off, uint64_t len)
{
    for (size_t i = 0; i < n; i++)
        if (off < r[i].off + r[i].len && r[i].off < off + len)
            return true;
    return false;
}

static void case_read_write(const char *sock)
{
    struct nbd_handle *h = connect_default(sock);
    uint64_t size = (uint64_t)export_size(h);
    /* Unaligned, page-crossing, single-byte and end-of-export writes. */
    const Range r[] = {
        { 1 * MiB + 1, 1, 21 },
        { 2 * MiB - 3, 7, 22 },
        { 3 * MiB + 100, 4096, 23 },
        { 4 * MiB + 4095, 8194, 24 },
        { 5 * MiB, 64 * KiB, 25 },
        { 6 * MiB + 512, 1 * MiB + 3, 26 },
        { size - 3 * 4096 - 17, 3 * 4096 + 16, 27 },
        { size - 1, 1, 28 },
    };
    const size_t n = sizeof r / sizeof r[0];
    for (size_t i = 0; i < n; i++)
        write_pattern(h, r[i].off, r[i].len, r[i].seed);
    for (size_t i = 0; i < n; i++) {
        char what[128];
        snprintf(what, sizeof what, "read back of the %zu-byte write at %" PRIu64, r[i].len,
                 r[i].off);
        verify_range(h, r[i].off, r[i].len, r[i].seed, what);
        /* The bytes around a write stay zero: nothing spilled over. */
        if (r[i].off >= 100 && !overlaps_any(r, n, r[i].off - 100, 100))
            verify_range(h, r[i].off - 100, 100, 0, "the 100 bytes before a write");
        if (r[i].off + r[i].len + 100 <= size && !overlaps_any(r, n, r[i].off + r[i].len, 100))
            verify_range(h, r[i].off + r[i].len, 100, 0, "the 100 bytes after a write");
        note("%zu bytes at %" PRIu64 " read back intact, free neighbours still zero", r[i].len,
             r[i].off);
    }
    /* Overwriting part of a range replaces exactly that part. */
    const uint64_t o = 8 * MiB;
    write_pattern(h, o, 16 * KiB, 31);
    write_pattern(h, o + 5000, 3000, 32);
    verify_range(h, o, 5000, 31, "old data before a partial overwrite");
    verify_range(h, o + 5000, 3000, 32, "partial overwrite");
    verify_range(h, o + 8000, 16 * KiB - 8000, 31, "old data after a partial overwrite");
    note("partial overwrite inside a written range replaces exactly its bytes");
    close_handle(h);
}

static void case_unwritten_zero(const char *sock)
{
    struct nbd_handle *h = connect_default(sock);
    uint64_t size = (uint64_t)export_size(h);
    verify_range(h, 0, 1 * MiB, 0, "never-written first MiB");
    verify_range(h, 20 * MiB + 12345, 54321, 0, "never-written unaligned range");
    verify_range(h, size - 1 * MiB, 1 * MiB, 0, "never-written last MiB");
    verify_range(h, size - 1, 1, 0, "never-written last byte");
    note("never-written ranges (aligned, unaligned, at both ends) read as zeros");
    /* A write next to a hole leaves the hole zero. */
    write_pattern(h, 21 * MiB, 4096, 41);
    verify_range(h, 21 * MiB - 4096, 4096, 0, "the page before a written page");
    verify_range(h, 21 * MiB + 4096, 4096, 0, "the page after a written page");
    note("pages next to a written page still read as zeros");
    close_handle(h);
}

static void case_flush_fua(const char *sock)
{
    struct nbd_handle *h = connect_default(sock);
    nbd_ok(nbd_flush(h, 0), "NBD_CMD_FLUSH with nothing written");
    uint8_t *buf = xmalloc(64 * KiB);
    fill_pattern(buf, 64 * KiB, 2 * MiB, 51);
    nbd_ok(nbd_pwrite(h, buf, 64 * KiB, 2 * MiB, LIBNBD_CMD_FLAG_FUA), "NBD_CMD_WRITE with FUA");
    verify_range(h, 2 * MiB, 64 * KiB, 51, "data written with FUA");
    nbd_ok(nbd_trim(h, 16 * KiB, 2 * MiB, LIBNBD_CMD_FLAG_FUA), "NBD_CMD_TRIM with FUA");
    verify_range(h, 2 * MiB, 16 * KiB, 0, "range trimmed with FUA");
    nbd_ok(nbd_zero(h, 16 * KiB, 2 * MiB + 16 * KiB, LIBNBD_CMD_FLAG_FUA),
           "NBD_CMD_WRITE_ZEROES with FUA");
    verify_range(h, 2 * MiB + 16 * KiB, 16 * KiB, 0, "range zeroed with FUA");
    verify_range(h, 2 * MiB + 32 * KiB, 32 * KiB, 51, "data after the trimmed/zeroed ranges");
    write_pattern(h, 3 * MiB, 8192, 52);
    nbd_ok(nbd_flush(h, 0), "NBD_CMD_FLUSH after a write");
    verify_range(h, 3 * MiB, 8192, 52, "data after a flush");
    note("WRITE/TRIM/WRITE_ZEROES with FUA and FLUSH succeed; data as expected");
    free(buf);
    close_handle(h);
}

/* Trimmed data is gone: the page store frees it, so it reads as zeros
 * like never-written data. For trims that do not cover whole pages the
 * spec lets the server keep the old data, so each byte there may be old
 * or zero, and everything outside must be untouched. */
static void case_trim(const char *sock)
{
    struct nbd_handle *h = connect_default(sock);
    const uint64_t o = 8 * MiB;
    const uint64_t seed = 61;
    write_pattern(h, o, 1 * MiB, seed);
    nbd_ok(nbd_trim(h, 128 * KiB, o + 64 * KiB, 0), "page-aligned NBD_CMD_TRIM");
    verify_range(h, o, 64 * KiB, seed, "data before the trimmed range");
    verify_range(h, o + 64 * KiB, 128 * KiB, 0, "page-aligned trimmed range");
    verify_range(h, o + 192 * KiB, 1 * MiB - 192 * KiB, seed, "data after the trimmed range");
    note("page-aligned trim reads back as zeros; neighbours intact");

    const uint64_t t = o + 300 * KiB + 123, tl = 50000;
    nbd_ok(nbd_trim(h, tl, t, 0), "unaligned NBD_CMD_TRIM");
    uint8_t *buf = xmalloc(1 * MiB);
    nbd_ok(nbd_pread(h, buf, 1 * MiB, o, 0), "read after unaligned trim");
    for (uint64_t i = 0; i < 1 * MiB; i++) {
        uint64_t at = o + i;
        bool trimmed = (at >= o + 64 * KiB && at < o + 192 * KiB) || (at >= t && at < t + tl);
        uint8_t old = pattern_byte(seed, at);
        if (trimmed ? (buf[i] != 0 && buf[i] != old) : buf[i] != old)
            fail("after an unaligned trim of [%" PRIu64 ", +%" PRIu64 "): byte at %" PRIu64
                 " is 0x%02x, expected %s", t, tl, at, buf[i],
                 trimmed ? "the old data or zero" : "the old data (outside the trim)");
    }
    note("unaligned trim changed nothing outside [%" PRIu64 ", +%" PRIu64 ")", t, tl);
    free(buf);

    nbd_ok(nbd_trim(h, 1 * MiB, o, 0), "trim of the whole written MiB");
    verify_range(h, o, 1 * MiB, 0, "fully trimmed MiB");
    nbd_ok(nbd_trim(h, 4 * MiB, 40 * MiB, 0), "trim of never-written data");
    verify_range(h, 40 * MiB, 4 * MiB, 0, "trimmed never-written range");
    note("trimming all of a written range, and never-written data, reads as zeros");
    close_handle(h);
}

static void case_write_zeroes(const char *sock)
{
    struct nbd_handle *h = connect_default(sock);
    const uint64_t o = 12 * MiB, seed = 71;
    write_pattern(h, o, 1 * MiB, seed);
    struct {
        uint64_t off, len;
        uint32_t flags;
        const char *what;
    } z[] = {
        { o + 4 * KiB, 8 * KiB, 0, "aligned WRITE_ZEROES" },
        { o + 100 * KiB + 7, 10000, LIBNBD_CMD_FLAG_NO_HOLE, "unaligned WRITE_ZEROES+NO_HOLE" },
        { o + 256 * KiB, 64 * KiB, LIBNBD_CMD_FLAG_NO_HOLE | LIBNBD_CMD_FLAG_FUA,
          "aligned WRITE_ZEROES+NO_HOLE+FUA" },
        { o + 512 * KiB, 128 * KiB, LIBNBD_CMD_FLAG_FAST_ZERO, "aligned WRITE_ZEROES+FAST_ZERO" },
        { o + 700 * KiB + 1, 4094, LIBNBD_CMD_FLAG_FAST_ZERO | LIBNBD_CMD_FLAG_FUA,
          "unaligned WRITE_ZEROES+FAST_ZERO+FUA" },
    };
    const size_t n = sizeof z / sizeof z[0];
    for (size_t i = 0; i < n; i++) {
        if (nbd_zero(h, z[i].len, z[i].off, z[i].flags) == -1)
            fail("%s of [%" PRIu64 ", +%" PRIu64 ") failed: %s (a server that frees "
                 "zeroed pages can always zero fast)", z[i].what, z[i].off, z[i].len,
                 nbd_get_error());
        verify_range(h, z[i].off, z[i].len, 0, z[i].what);
        note("%s of [%" PRIu64 ", +%" PRIu64 ") reads back as zeros", z[i].what, z[i].off,
             z[i].len);
    }
    /* Everything not zeroed is the old data. */
    uint8_t *buf = xmalloc(1 * MiB);
    nbd_ok(nbd_pread(h, buf, 1 * MiB, o, 0), "read after WRITE_ZEROES");
    for (uint64_t i = 0; i < 1 * MiB; i++) {
        bool zeroed = false;
        for (size_t k = 0; k < n; k++)
            zeroed |= o + i >= z[k].off && o + i < z[k].off + z[k].len;
        uint8_t want = zeroed ? 0 : pattern_byte(seed, o + i);
        if (buf[i] != want)
            fail("after WRITE_ZEROES: byte at %" PRIu64 " is 0x%02x, expected 0x%02x (%s)",
                 o + i, buf[i], want, zeroed ? "zeroed" : "outside every zeroed range");
    }
    note("bytes outside the zeroed ranges are unchanged");
    nbd_ok(nbd_zero(h, 2 * MiB, 44 * MiB, LIBNBD_CMD_FLAG_FAST_ZERO),
           "FAST_ZERO on never-written data");
    verify_range(h, 44 * MiB, 2 * MiB, 0, "zeroed never-written range");
    /* A write after zeroing lands normally. */
    write_pattern(h, o + 4 * KiB, 4 * KiB, 72);
    verify_range(h, o + 4 * KiB, 4 * KiB, 72, "write into a zeroed range");
    note("writes into zeroed ranges read back");
    free(buf);
    close_handle(h);
}

static void case_cache(const char *sock)
{
    struct nbd_handle *h = connect_default(sock);
    write_pattern(h, 14 * MiB, 256 * KiB, 81);
    nbd_ok(nbd_cache(h, 256 * KiB, 14 * MiB, 0), "NBD_CMD_CACHE of written data");
    nbd_ok(nbd_cache(h, 3333, 14 * MiB + 777, 0), "unaligned NBD_CMD_CACHE");
    nbd_ok(nbd_cache(h, 1 * MiB, 30 * MiB, 0), "NBD_CMD_CACHE of never-written data");
    nbd_ok(nbd_cache(h, 40 * MiB, 0, 0), "NBD_CMD_CACHE of 40 MiB (more than a payload)");
    verify_range(h, 14 * MiB, 256 * KiB, 81, "data after CACHE");
    verify_range(h, 30 * MiB, 1 * MiB, 0, "never-written data after CACHE");
    note("CACHE succeeds and changes no data");
    close_handle(h);
}

/* ---- many requests in flight ------------------------------------------ */

#define INFLIGHT 128
#define SLOT (64 * KiB)

typedef struct {
    uint64_t off;
    size_t len;
    uint64_t seed;
    bool is_read;
    bool done;
    uint8_t *buf;
} Op;

static int op_done(void *opaque, int *error)
{
    Op *op = opaque;
    if (*error)
        fail("%s of %zu bytes at %" PRIu64 " failed: %s", op->is_read ? "aio READ" : "aio WRITE",
             op->len, op->off, strerror(*error));
    if (op->is_read) {
        char what[96];
        snprintf(what, sizeof what, "aio READ reply for [%" PRIu64 ", +%zu)", op->off, op->len);
        check_pattern(op->buf, op->len, op->off, op->seed, what);
    }
    op->done = true;
    return 1;   /* retire the command: its result has been checked */
}

static void submit(struct nbd_handle *h, Op *op)
{
    nbd_completion_callback cb = { .callback = op_done, .user_data = op };
    int64_t cookie;
    if (op->is_read) {
        memset(op->buf, 0xa5, op->len);
        cookie = nbd_aio_pread(h, op->buf, op->len, op->off, cb, 0);
    } else {
        fill_pattern(op->buf, op->len, op->off, op->seed);
        cookie = nbd_aio_pwrite(h, op->buf, op->len, op->off, cb, 0);
    }
    if (cookie == -1)
        fail("submitting an aio request: %s", nbd_get_error());
}

/* Submit all, then run the connection until every completion ran. */
static void run_batch(struct nbd_handle *h, Op *ops, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        submit(h, &ops[i]);
    int peak = nbd_aio_in_flight(h);
    if (peak < (int)n / 2)
        fail("%s: only %d of %zu requests were in flight after submitting them", what, peak, n);
    size_t done;
    do {
        if (nbd_poll(h, -1) == -1)
            fail("%s: nbd_poll: %s", what, nbd_get_error());
        done = 0;
        for (size_t i = 0; i < n; i++)
            done += ops[i].done;
    } while (done < n);
    note("%s: %zu requests (%d in flight at once) all answered correctly", what, n, peak);
}

static void case_in_flight(const char *sock)
{
    struct nbd_handle *h = connect_default(sock);
    Op *ops = calloc(2 * INFLIGHT, sizeof *ops);
    if (!ops)
        fail("out of memory");
    for (size_t i = 0; i < 2 * INFLIGHT; i++)
        ops[i].buf = xmalloc(SLOT);

    /* 128 writes to distinct 64 KiB slots, then 128 reads of them. */
    for (size_t i = 0; i < INFLIGHT; i++)
        ops[i] = (Op){ .off = 16 * MiB + i * SLOT, .len = SLOT, .seed = 100 + i,
                       .buf = ops[i].buf };
    run_batch(h, ops, INFLIGHT, "128 concurrent WRITEs");
    for (size_t i = 0; i < INFLIGHT; i++)
        ops[i] = (Op){ .off = 16 * MiB + i * SLOT, .len = SLOT, .seed = 100 + i,
                       .is_read = true, .buf = ops[i].buf };
    run_batch(h, ops, INFLIGHT, "128 concurrent READs");

    /* Mixed: reads of those slots interleaved with writes of new ones,
     * and sizes from 1 byte up, so replies of different cost overtake
     * each other. */
    for (size_t i = 0; i < 2 * INFLIGHT; i++) {
        size_t k = i / 2;
        size_t len = (size_t)1 << (k % 17);   /* 1 B .. 64 KiB */
        if (i % 2)
            ops[i] = (Op){ .off = 16 * MiB + k * SLOT, .len = len, .seed = 100 + k,
                           .is_read = true, .buf = ops[i].buf };
        else
            ops[i] = (Op){ .off = 32 * MiB + k * SLOT + 3, .len = len, .seed = 400 + k,
                           .buf = ops[i].buf };
    }
    run_batch(h, ops, 2 * INFLIGHT, "256 concurrent mixed READs/WRITEs");
    for (size_t i = 0; i < 2 * INFLIGHT; i += 2) {
        Op *w = &ops[i];
        verify_range(h, w->off, w->len, w->seed, "data of a concurrent mixed WRITE");
    }
    note("every write of the mixed batch reads back");
    for (size_t i = 0; i < 2 * INFLIGHT; i++)
        free(ops[i].buf);
    free(ops);
    close_handle(h);
}

/* NBD_CMD_DISC: the server must carry out everything sent before it. */
static void case_disc_after_writes(const char *sock)
{
    struct nbd_handle *h = connect_default(sock);
    Op ops[64];
    for (size_t i = 0; i < 64; i++) {
        ops[i] = (Op){ .off = 48 * MiB + i * SLOT, .len = SLOT, .seed = 600 + i,
                       .buf = xmalloc(SLOT) };
        submit(h, &ops[i]);
    }
    nbd_ok(nbd_shutdown(h, 0), "NBD_CMD_DISC right after 64 unanswered WRITEs");
    nbd_close(h);
    h = connect_default(sock);
    for (size_t i = 0; i < 64; i++) {
        verify_range(h, ops[i].off, ops[i].len, ops[i].seed, "a WRITE sent just before DISC");
        free(ops[i].buf);
    }
    note("all 64 writes sent before NBD_CMD_DISC were carried out");
    close_handle(h);
}

/* ---- two connections ----------------------------------------------------- */

typedef struct {
    const char *sock;
    uint64_t mine, theirs;   /* 4 MiB ranges */
    uint64_t my_seed, their_seed;
    pthread_barrier_t *barrier;
} Peer;

static void *peer_main(void *arg)
{
    Peer *p = arg;
    struct nbd_handle *h = connect_default(p->sock);
    if (nbd_can_multi_conn(h) != 1)
        fail("NBD_FLAG_CAN_MULTI_CONN is not advertised");
    /* Writes from both connections overlap in time. */
    pthread_barrier_wait(p->barrier);
    for (uint64_t o = 0; o < 4 * MiB; o += 256 * KiB)
        write_pattern(h, p->mine + o, 256 * KiB, p->my_seed);
    nbd_ok(nbd_flush(h, 0), "NBD_CMD_FLUSH after this connection's writes");
    /* Both flushed: each must now see the other's data. */
    pthread_barrier_wait(p->barrier);
    verify_range(h, p->theirs, 4 * MiB, p->their_seed,
                 "data written and flushed by the other connection");
    verify_range(h, p->mine, 4 * MiB, p->my_seed, "this connection's own data");
    close_handle(h);
    return NULL;
}

static void case_multi_conn(const char *sock)
{
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, 2);
    Peer a = { sock, 16 * MiB, 20 * MiB, 901, 902, &barrier };
    Peer b = { sock, 20 * MiB, 16 * MiB, 902, 901, &barrier };
    pthread_t ta, tb;
    int err = pthread_create(&ta, NULL, peer_main, &a);
    if (!err)
        err = pthread_create(&tb, NULL, peer_main, &b);
    if (err)
        fail("pthread_create: %s", strerror(err));
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    pthread_barrier_destroy(&barrier);
    note("two connections wrote 4 MiB each at once; after FLUSH each reads the other's data");

    /* Without waiting for a flush, a reply to a write on one connection
     * already means the data is in the shared store. */
    struct nbd_handle *h1 = connect_default(sock), *h2 = connect_default(sock);
    for (int i = 0; i < 32; i++) {
        uint64_t off = 24 * MiB + (uint64_t)i * 8192 + 11;
        write_pattern(i % 2 ? h1 : h2, off, 5000, 950 + (uint64_t)i);
        nbd_ok(nbd_flush(i % 2 ? h1 : h2, 0), "flush");
        verify_range(i % 2 ? h2 : h1, off, 5000, 950 + (uint64_t)i,
                     "other connection's write, read after its flush");
    }
    note("32 alternating write+flush / read-on-the-other-connection rounds agree");
    close_handle(h1);
    close_handle(h2);
}

/* ---- largest requests ------------------------------------------------- */

static void case_large(const char *sock)
{
    struct nbd_handle *h = connect_default(sock);
    uint64_t size = (uint64_t)export_size(h);
    if (size < 64 * MiB)
        fail("this case needs an export of at least 64 MiB, the server offers %" PRIu64, size);
    const size_t L = NBD_MAX_PAYLOAD;
    write_pattern(h, 0, L, 1001);
    verify_range(h, 0, L, 1001, "32 MiB read after a 32 MiB write at 0");
    note("32 MiB WRITE and READ at offset 0");
    write_pattern(h, size - L, L, 1002);
    verify_range(h, size - L, L, 1002, "32 MiB read of the export's last 32 MiB");
    note("32 MiB WRITE and READ ending at the end of the export");

    /* Two 32 MiB reads in flight at once. */
    Op ops[2] = {
        { .off = 0, .len = L, .seed = 1001, .is_read = true, .buf = xmalloc(L) },
        { .off = size - L, .len = L, .seed = 1002, .is_read = true, .buf = xmalloc(L) },
    };
    for (int i = 0; i < 2; i++)
        submit(h, &ops[i]);
    while (!ops[0].done || !ops[1].done)
        if (nbd_poll(h, -1) == -1)
            fail("nbd_poll: %s", nbd_get_error());
    free(ops[0].buf);
    free(ops[1].buf);
    note("two 32 MiB READs in flight at once return the right data");

    /* Effect lengths beyond the payload limit: the spec lets the server
     * refuse them with EINVAL or EOVERFLOW, but if it succeeds the effect
     * must be complete. */
    if (nbd_zero(h, 48 * MiB, 8 * MiB, 0) == 0) {
        verify_range(h, 8 * MiB, L, 0, "first 32 MiB of a 48 MiB WRITE_ZEROES");
        verify_range(h, 40 * MiB, 16 * MiB, 0, "last 16 MiB of a 48 MiB WRITE_ZEROES");
        verify_range(h, 0, 8 * MiB, 1001, "data before a 48 MiB WRITE_ZEROES");
        note("48 MiB WRITE_ZEROES (larger than a payload) zeroed all of it");
    } else if (nbd_get_errno() == EINVAL || nbd_get_errno() == EOVERFLOW) {
        note("48 MiB WRITE_ZEROES refused with %s (allowed by the spec)",
             strerror(nbd_get_errno()));
    } else {
        fail("48 MiB WRITE_ZEROES failed with an error the spec does not allow: %s",
             nbd_get_error());
    }
    if (nbd_trim(h, 64 * MiB, 0, 0) == 0) {
        verify_range(h, 0, L, 0, "first 32 MiB after trimming the whole export");
        verify_range(h, L, L, 0, "last 32 MiB after trimming the whole export");
        note("64 MiB TRIM of the whole export leaves it all zero");
    } else if (nbd_get_errno() == EINVAL || nbd_get_errno() == EOVERFLOW) {
        note("64 MiB TRIM refused with %s (allowed by the spec)", strerror(nbd_get_errno()));
    } else {
        fail("64 MiB TRIM failed with an error the spec does not allow: %s", nbd_get_error());
    }
    close_handle(h);
}

static const TestCase cases[] = {
    { "read-write", case_read_write, "WRITE/READ at unaligned, tiny, large, end offsets" },
    { "unwritten-zero", case_unwritten_zero, "never-written data reads as zeros" },
    { "flush-fua", case_flush_fua, "FLUSH, and WRITE/TRIM/WRITE_ZEROES with FUA" },
    { "trim", case_trim, "TRIM (aligned, unaligned, whole) then READ" },
    { "write-zeroes", case_write_zeroes, "WRITE_ZEROES with NO_HOLE, FAST_ZERO, FUA" },
    { "cache", case_cache, "CACHE succeeds and changes nothing" },
    { "in-flight", case_in_flight, "128 and 256 requests in flight, every reply checked" },
    { "disc-after-writes", case_disc_after_writes, "DISC after 64 unanswered WRITEs" },
    { "multi-conn", case_multi_conn, "two connections write at once, read each other's" },
    { "large", case_large, "32 MiB READ/WRITE, 2 at once; 48/64 MiB effect lengths" },
};

int main(int argc, char **argv)
{
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
