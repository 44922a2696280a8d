/* NBD handshake tests through libnbd: NBD_OPT_GO / INFO / LIST / ABORT /
 * EXPORT_NAME, what the export advertises (size, transmission flags, block
 * sizes), structured replies and the base:allocation meta context.
 * Expects nbd-pagesrv started with --size 64M and the default export name. */
#include "proto-common.h"

#define EXPECT_SIZE (64 * MiB)
#define EXPORT_NAME "swap"

static void expect_int(int64_t got, int64_t want, const char *what)
{
    if (got != want)
        fail("%s: expected %" PRId64 ", got %" PRId64 "%s%s", what, want, got,
             got == -1 ? ": " : "", got == -1 ? nbd_get_error() : "");
    note("%s = %" PRId64, what, got);
}

/* A write and read back proves the connection really is in transmission.
 * Offsets are at 32 MiB and above, away from the block-status layout. */
static void roundtrip(struct nbd_handle *h, uint64_t off, uint64_t seed)
{
    write_pattern(h, off, 8192, seed);
    verify_range(h, off, 8192, seed, "read back after write");
    note("write + read back of 8 KiB at %" PRIu64 " works", off);
}

static void close_handle(struct nbd_handle *h)
{
    nbd_ok(nbd_shutdown(h, 0), "nbd_shutdown");
    nbd_close(h);
}

/* The transmission flags the shared design promises, one by one. */
static void check_export_flags(struct nbd_handle *h)
{
    expect_int(nbd_is_read_only(h), 0, "nbd_is_read_only");
    expect_int(nbd_can_flush(h), 1, "nbd_can_flush (NBD_FLAG_SEND_FLUSH)");
    expect_int(nbd_can_fua(h), 1, "nbd_can_fua (NBD_FLAG_SEND_FUA)");
    expect_int(nbd_can_trim(h), 1, "nbd_can_trim (NBD_FLAG_SEND_TRIM)");
    expect_int(nbd_can_zero(h), 1, "nbd_can_zero (NBD_FLAG_SEND_WRITE_ZEROES)");
    expect_int(nbd_can_fast_zero(h), 1, "nbd_can_fast_zero (NBD_FLAG_SEND_FAST_ZERO)");
    expect_int(nbd_can_cache(h), 1, "nbd_can_cache (NBD_FLAG_SEND_CACHE)");
    expect_int(nbd_can_multi_conn(h), 1, "nbd_can_multi_conn (NBD_FLAG_CAN_MULTI_CONN)");
    expect_int(nbd_is_rotational(h), 0, "nbd_is_rotational");
}

static void case_go(const char *sock)
{
    struct nbd_handle *h = handle_new();
    nbd_ok(nbd_set_export_name(h, EXPORT_NAME), "nbd_set_export_name");
    nbd_ok(nbd_set_full_info(h, true), "nbd_set_full_info");
    handle_connect(h, sock);
    const char *proto = nbd_get_protocol(h);
    if (!proto || strcmp(proto, "newstyle-fixed") != 0)
        fail("expected the fixed newstyle handshake, libnbd negotiated '%s'",
             proto ? proto : "(null)");
    note("protocol is %s (NBD_OPT_GO used)", proto);
    expect_int(export_size(h), (int64_t)EXPECT_SIZE, "export size (NBD_INFO_EXPORT)");
    char *canon = nbd_get_canonical_export_name(h);
    if (!canon || strcmp(canon, EXPORT_NAME) != 0)
        fail("NBD_INFO_NAME: expected canonical name '%s', got '%s'", EXPORT_NAME,
             canon ? canon : nbd_get_error());
    note("canonical export name (NBD_INFO_NAME) is '%s'", canon);
    free(canon);
    check_export_flags(h);
    roundtrip(h, (32 + 4) * MiB, 1);
    close_handle(h);
}

static void case_go_default_name(const char *sock)
{
    /* The empty name selects the default export, which is the one export. */
    struct nbd_handle *h = handle_new();
    nbd_ok(nbd_set_export_name(h, ""), "nbd_set_export_name(\"\")");
    handle_connect(h, sock);
    expect_int(export_size(h), (int64_t)EXPECT_SIZE, "size of the default export \"\"");
    roundtrip(h, (32 + 4) * MiB, 2);
    close_handle(h);

    /* Both names reach the same data. */
    h = connect_default(sock);
    verify_range(h, (32 + 4) * MiB, 8192, 2,
                 "data written through export \"\" read through \"swap\"");
    note("export \"\" and export \"swap\" are the same store");
    close_handle(h);
}

static void case_block_size(const char *sock)
{
    struct nbd_handle *h = connect_default(sock);
    expect_int(nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM), 1, "minimum block size");
    expect_int(nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED), 4096, "preferred block size");
    expect_int(nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM), (int64_t)NBD_MAX_PAYLOAD,
               "maximum block size");
    close_handle(h);
}

static struct nbd_handle *connect_opt_mode(const char *sock, const char *name)
{
    struct nbd_handle *h = handle_new();
    nbd_ok(nbd_set_opt_mode(h, true), "nbd_set_opt_mode");
    nbd_ok(nbd_set_export_name(h, name), "nbd_set_export_name");
    handle_connect(h, sock);
    if (!nbd_aio_is_negotiating(h))
        fail("after connecting in option mode the handle should be negotiating, state: %s",
             nbd_aio_is_dead(h) ? "dead" : "other");
    return h;
}

static void case_info_then_go(const char *sock)
{
    struct nbd_handle *h = connect_opt_mode(sock, EXPORT_NAME);
    nbd_ok(nbd_opt_info(h), "NBD_OPT_INFO for 'swap'");
    note("NBD_OPT_INFO succeeded and the handshake continues");
    expect_int(export_size(h), (int64_t)EXPECT_SIZE, "export size from NBD_OPT_INFO");
    check_export_flags(h);
    /* A second INFO is allowed and must agree. */
    nbd_ok(nbd_opt_info(h), "second NBD_OPT_INFO");
    expect_int(export_size(h), (int64_t)EXPECT_SIZE, "export size from a second NBD_OPT_INFO");
    nbd_ok(nbd_opt_go(h), "NBD_OPT_GO after NBD_OPT_INFO");
    if (!nbd_aio_is_ready(h))
        fail("after NBD_OPT_GO succeeded the handle is not ready for transmission");
    expect_int(export_size(h), (int64_t)EXPECT_SIZE, "export size from NBD_OPT_GO");
    roundtrip(h, (32 + 5) * MiB, 3);
    close_handle(h);
}

typedef struct {
    int count;
    bool saw_export;
    char names[256];
} ListResult;

static int list_cb(void *opaque, const char *name, const char *description)
{
    (void)description;
    ListResult *r = opaque;
    r->count++;
    if (strcmp(name, EXPORT_NAME) == 0)
        r->saw_export = true;
    size_t used = strlen(r->names);
    snprintf(r->names + used, sizeof r->names - used, "%s'%s'", used ? ", " : "", name);
    return 0;
}

static void case_list(const char *sock)
{
    struct nbd_handle *h = connect_opt_mode(sock, EXPORT_NAME);
    ListResult r = { 0 };
    int n = nbd_opt_list(h, (nbd_list_callback){ .callback = list_cb, .user_data = &r });
    if (n == -1)
        fail("NBD_OPT_LIST failed: %s", nbd_get_error());
    if (r.count != 1 || !r.saw_export)
        fail("NBD_OPT_LIST: expected exactly one NBD_REP_SERVER for '%s', got %d: %s",
             EXPORT_NAME, r.count, r.names);
    note("NBD_OPT_LIST lists exactly %s", r.names);
    /* Listing does not end negotiation. */
    nbd_ok(nbd_opt_go(h), "NBD_OPT_GO after NBD_OPT_LIST");
    roundtrip(h, (32 + 6) * MiB, 4);
    close_handle(h);
}

static void case_abort(const char *sock)
{
    struct nbd_handle *h = connect_opt_mode(sock, EXPORT_NAME);
    nbd_ok(nbd_opt_abort(h), "NBD_OPT_ABORT");
    if (!nbd_aio_is_closed(h))
        fail("after NBD_OPT_ABORT the connection should be closed");
    note("NBD_OPT_ABORT acknowledged and the connection closed");
    nbd_close(h);
    /* Right after an abort the server serves new clients normally. */
    h = connect_default(sock);
    roundtrip(h, (32 + 7) * MiB, 5);
    close_handle(h);
}

static void case_unknown_export(const char *sock)
{
    struct nbd_handle *h = connect_opt_mode(sock, "no-such-export");
    expect_error(nbd_opt_info(h), ENOENT, "NBD_OPT_INFO for unknown export 'no-such-export' "
                 "(NBD_REP_ERR_UNKNOWN)");
    expect_error(nbd_opt_go(h), ENOENT, "NBD_OPT_GO for unknown export 'no-such-export' "
                 "(NBD_REP_ERR_UNKNOWN)");
    if (!nbd_aio_is_negotiating(h))
        fail("after an option error the handshake must go on, but the handle is not "
             "negotiating any more");
    /* The same connection can still pick the right export. */
    nbd_ok(nbd_set_export_name(h, EXPORT_NAME), "nbd_set_export_name");
    nbd_ok(nbd_opt_go(h), "NBD_OPT_GO for 'swap' after failed options");
    roundtrip(h, (32 + 8) * MiB, 6);
    close_handle(h);

    /* Without option mode, libnbd's connect must fail cleanly too. */
    h = handle_new();
    nbd_ok(nbd_set_export_name(h, "no-such-export"), "nbd_set_export_name");
    if (nbd_connect_unix(h, sock) != -1)
        fail("connecting to unknown export 'no-such-export' succeeded");
    note("connect to an unknown export fails: %s", nbd_get_error());
    nbd_close(h);
}

/* NBD_OPT_EXPORT_NAME is what libnbd sends when it is told not to use
 * fixed newstyle; with NO_ZEROES the server must omit the 124 zero bytes
 * and without it must send them, or the next reply would be misparsed. */
static void export_name_with(const char *sock, uint32_t hflags, const char *label)
{
    struct nbd_handle *h = handle_new();
    nbd_ok(nbd_set_handshake_flags(h, hflags), "nbd_set_handshake_flags");
    nbd_ok(nbd_set_export_name(h, EXPORT_NAME), "nbd_set_export_name");
    handle_connect(h, sock);
    const char *proto = nbd_get_protocol(h);
    if (!proto || strcmp(proto, "newstyle") != 0)
        fail("%s: expected the plain newstyle handshake (NBD_OPT_EXPORT_NAME), libnbd "
             "negotiated '%s'", label, proto ? proto : "(null)");
    expect_int(nbd_get_structured_replies_negotiated(h), 0,
               "structured replies negotiated with NBD_OPT_EXPORT_NAME");
    expect_int(export_size(h), (int64_t)EXPECT_SIZE, "export size from NBD_OPT_EXPORT_NAME");
    check_export_flags(h);
    roundtrip(h, (32 + 9) * MiB, 7);
    close_handle(h);
    note("%s: NBD_OPT_EXPORT_NAME handshake works", label);
}

static void case_export_name(const char *sock)
{
    export_name_with(sock, 0, "client flags 0 (124 zero bytes expected)");
    export_name_with(sock, LIBNBD_HANDSHAKE_FLAG_NO_ZEROES,
                     "client flag NO_ZEROES (no zero padding expected)");

    struct nbd_handle *h = handle_new();
    nbd_ok(nbd_set_handshake_flags(h, 0), "nbd_set_handshake_flags");
    nbd_ok(nbd_set_export_name(h, "no-such-export"), "nbd_set_export_name");
    if (nbd_connect_unix(h, sock) != -1)
        fail("NBD_OPT_EXPORT_NAME for unknown export 'no-such-export' was accepted");
    note("NBD_OPT_EXPORT_NAME for an unknown export: the server closed (%s)", nbd_get_error());
    nbd_close(h);
}

static void case_structured_off(const char *sock)
{
    struct nbd_handle *h = handle_new();
    nbd_ok(nbd_set_request_structured_replies(h, false), "nbd_set_request_structured_replies");
    nbd_ok(nbd_set_export_name(h, EXPORT_NAME), "nbd_set_export_name");
    handle_connect(h, sock);
    expect_int(nbd_get_structured_replies_negotiated(h), 0,
               "structured replies negotiated when not requested");
    roundtrip(h, (32 + 10) * MiB, 8);
    /* A read that fails must come back as a simple error reply. */
    uint8_t b[4096];
    expect_error(nbd_pread(h, b, sizeof b, EXPECT_SIZE, 0), EINVAL,
                 "READ past the end with simple replies");
    roundtrip(h, (32 + 10) * MiB, 9);
    close_handle(h);
}

typedef struct {
    int count;
    bool saw_base;
} ContextList;

static int context_cb(void *opaque, const char *name)
{
    ContextList *l = opaque;
    l->count++;
    if (strcmp(name, LIBNBD_CONTEXT_BASE_ALLOCATION) == 0)
        l->saw_base = true;
    note("NBD_OPT_LIST_META_CONTEXT offers '%s'", name);
    return 0;
}

static void case_meta_context(const char *sock)
{
    /* Listing with no query returns every context. */
    struct nbd_handle *h = connect_opt_mode(sock, EXPORT_NAME);
    ContextList l = { 0 };
    if (nbd_opt_list_meta_context(h, (nbd_context_callback){ .callback = context_cb,
                                                            .user_data = &l }) == -1)
        fail("NBD_OPT_LIST_META_CONTEXT failed: %s", nbd_get_error());
    if (!l.saw_base)
        fail("NBD_OPT_LIST_META_CONTEXT without queries did not offer base:allocation");
    nbd_ok(nbd_opt_abort(h), "NBD_OPT_ABORT");
    nbd_close(h);

    /* Selecting it works; an unknown namespace is ignored, not an error. */
    h = handle_new();
    nbd_ok(nbd_set_export_name(h, EXPORT_NAME), "nbd_set_export_name");
    nbd_ok(nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION), "nbd_add_meta_context");
    nbd_ok(nbd_add_meta_context(h, "x-no-such-namespace:thing"), "nbd_add_meta_context");
    nbd_ok(nbd_add_meta_context(h, "base:no-such-leaf"), "nbd_add_meta_context");
    handle_connect(h, sock);
    expect_int(nbd_get_structured_replies_negotiated(h), 1, "structured replies negotiated");
    expect_int(nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION), 1,
               "base:allocation selected");
    expect_int(nbd_can_meta_context(h, "x-no-such-namespace:thing"), 0,
               "unknown-namespace context selected");
    expect_int(nbd_can_meta_context(h, "base:no-such-leaf"), 0,
               "unknown base: leaf selected");
    close_handle(h);
}

/* "base:" alone must select nothing in NBD_OPT_SET_META_CONTEXT (proto.md,
 * "The base: metadata namespace": the server MUST ignore that form there). */
static void case_meta_context_wildcard(const char *sock)
{
    struct nbd_handle *h = handle_new();
    nbd_ok(nbd_set_export_name(h, EXPORT_NAME), "nbd_set_export_name");
    nbd_ok(nbd_add_meta_context(h, "base:"), "nbd_add_meta_context");
    handle_connect(h, sock);
    expect_int(nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION), 0,
               "base:allocation selected by SET_META_CONTEXT with the lone query \"base:\" "
               "(which the server MUST ignore)");
    close_handle(h);
}

/* ---- block status --------------------------------------------------- */

#define BS_SPAN (16 * MiB)
#define PAGE 4096u

typedef struct {
    uint64_t next;          /* where the next extent must start */
    uint32_t *flags;        /* per 4 KiB page of [0, BS_SPAN); UINT32_MAX = unknown */
    int calls;
} ExtentMap;

static int extent_cb(void *opaque, const char *ctx, uint64_t off, uint32_t *e, size_t n,
                     int *error)
{
    ExtentMap *m = opaque;
    if (*error)
        fail("block status reported error %d", *error);
    if (strcmp(ctx, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
        fail("block status for unexpected context '%s'", ctx);
    if (off != m->next)
        fail("block status reply starts at %" PRIu64 ", requested %" PRIu64, off, m->next);
    if (n == 0 || n % 2)
        fail("block status reply with %zu array entries", n);
    m->calls++;
    for (size_t i = 0; i < n; i += 2) {
        uint32_t len = e[i], fl = e[i + 1];
        if (len == 0)
            fail("block status descriptor of length 0 at %" PRIu64, off);
        for (uint64_t o = off; o < off + len && o < BS_SPAN; o += PAGE)
            if (o % PAGE == 0)
                m->flags[o / PAGE] = fl;
        off += len;
    }
    m->next = off;
    return 0;
}

static void map_block_status(struct nbd_handle *h, ExtentMap *m)
{
    m->next = 0;
    while (m->next < BS_SPAN) {
        uint64_t at = m->next;
        if (nbd_block_status(h, BS_SPAN - at, at,
                             (nbd_extent_callback){ .callback = extent_cb, .user_data = m },
                             0) == -1)
            fail("NBD_CMD_BLOCK_STATUS offset=%" PRIu64 " length=%" PRIu64 " failed: %s", at,
                 BS_SPAN - at, nbd_get_error());
        if (m->next <= at)
            fail("block status made no progress at %" PRIu64, at);
    }
}

static void expect_pages(const ExtentMap *m, uint64_t off, uint64_t len, uint32_t mask,
                         uint32_t want, const char *what)
{
    for (uint64_t o = off; o < off + len; o += PAGE) {
        uint32_t fl = m->flags[o / PAGE];
        if ((fl & mask) != want)
            fail("block status for %s: page at %" PRIu64 " has flags 0x%x (hole=%u zero=%u), "
                 "expected flags&0x%x == 0x%x", what, o, fl, fl & 1, (fl >> 1) & 1, mask, want);
    }
    note("block status: %s [%" PRIu64 ", +%" PRIu64 ") has flags&0x%x == 0x%x", what, off,
         len, mask, want);
}

static int req_one_cb(void *opaque, const char *ctx, uint64_t off, uint32_t *e, size_t n,
                      int *error)
{
    (void)ctx;
    (void)off;
    (void)error;
    uint32_t *out = opaque;
    if (n != 2)
        fail("NBD_CMD_FLAG_REQ_ONE: expected exactly one descriptor, got %zu", n / 2);
    out[0] = e[0];
    out[1] = e[1];
    return 0;
}

static void case_block_status(const char *sock)
{
    struct nbd_handle *h = handle_new();
    nbd_ok(nbd_set_export_name(h, EXPORT_NAME), "nbd_set_export_name");
    nbd_ok(nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION), "nbd_add_meta_context");
    handle_connect(h, sock);
    expect_int(nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION), 1,
               "base:allocation negotiated");

    /* Layout: data A = [1M, 1M+64K) with a trimmed hole B = [1M+16K, +16K)
     * inside; C = [4M, +64K) written then zeroed; D = [8M, ...) never
     * written. */
    const uint64_t A = 1 * MiB, B = A + 16 * KiB, C = 4 * MiB, D = 8 * MiB;
    write_pattern(h, A, 64 * KiB, 11);
    nbd_ok(nbd_trim(h, 16 * KiB, B, 0), "NBD_CMD_TRIM");
    write_pattern(h, C, 64 * KiB, 12);
    nbd_ok(nbd_zero(h, 64 * KiB, C, 0), "NBD_CMD_WRITE_ZEROES");

    ExtentMap m = { .flags = xmalloc(BS_SPAN / PAGE * sizeof(uint32_t)) };
    memset(m.flags, 0xff, BS_SPAN / PAGE * sizeof(uint32_t));
    map_block_status(h, &m);
    note("block status mapped [0, %" PRIu64 ") in %d request(s)", BS_SPAN, m.calls);
    const uint32_t HZ = LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO;
    expect_pages(&m, A, B - A, HZ, 0, "written data before the trim");
    expect_pages(&m, B, 16 * KiB, HZ, HZ, "trimmed range");
    expect_pages(&m, B + 16 * KiB, A + 64 * KiB - (B + 16 * KiB), HZ, 0,
                 "written data after the trim");
    expect_pages(&m, C, 64 * KiB, LIBNBD_STATE_ZERO, LIBNBD_STATE_ZERO, "zeroed range");
    expect_pages(&m, D, BS_SPAN - D, HZ, HZ, "never-written range");
    expect_pages(&m, 0, A, HZ, HZ, "never-written start");
    free(m.flags);

    /* REQ_ONE: one descriptor, no longer than asked. */
    uint32_t one[2];
    nbd_ok(nbd_block_status(h, 12345, A + 100,
                            (nbd_extent_callback){ .callback = req_one_cb, .user_data = one },
                            LIBNBD_CMD_FLAG_REQ_ONE),
           "NBD_CMD_BLOCK_STATUS with NBD_CMD_FLAG_REQ_ONE");
    if (one[0] > 12345 || one[0] == 0)
        fail("NBD_CMD_FLAG_REQ_ONE: descriptor length %u for a 12345-byte request", one[0]);
    if (one[1] & HZ)
        fail("NBD_CMD_FLAG_REQ_ONE over written data reported flags 0x%x", one[1]);
    note("REQ_ONE block status: one descriptor of %u bytes, flags 0x%x", one[0], one[1]);
    nbd_ok(nbd_block_status(h, 1000, D + 7,
                            (nbd_extent_callback){ .callback = req_one_cb, .user_data = one },
                            LIBNBD_CMD_FLAG_REQ_ONE),
           "NBD_CMD_BLOCK_STATUS with NBD_CMD_FLAG_REQ_ONE (unaligned, in a hole)");
    if (one[0] > 1000 || (one[1] & HZ) != HZ)
        fail("REQ_ONE over a hole: length %u flags 0x%x, expected <= 1000 and hole|zero",
             one[0], one[1]);
    note("REQ_ONE block status in a hole: %u bytes, flags 0x%x", one[0], one[1]);

    /* The tail of the export is reachable and reports correctly. */
    int64_t size = export_size(h);
    nbd_ok(nbd_block_status(h, 1, (uint64_t)size - 1,
                            (nbd_extent_callback){ .callback = req_one_cb, .user_data = one },
                            LIBNBD_CMD_FLAG_REQ_ONE),
           "NBD_CMD_BLOCK_STATUS of the last byte");
    if (one[0] != 1 || (one[1] & HZ) != HZ)
        fail("block status of the last byte: length %u flags 0x%x", one[0], one[1]);
    note("block status of the last byte: 1 byte, hole|zero");
    close_handle(h);
}

static const TestCase cases[] = {
    { "go", case_go, "NBD_OPT_GO to 'swap': protocol, size, name, flags, I/O" },
    { "go-default-name", case_go_default_name, "the empty export name selects the export" },
    { "block-size", case_block_size, "NBD_INFO_BLOCK_SIZE: min 1, preferred 4096, max 32M" },
    { "info-then-go", case_info_then_go, "NBD_OPT_INFO (twice), then NBD_OPT_GO" },
    { "list", case_list, "NBD_OPT_LIST names the one export; GO afterwards" },
    { "abort", case_abort, "NBD_OPT_ABORT is acknowledged; new clients still served" },
    { "unknown-export", case_unknown_export, "INFO/GO on an unknown name: ERR_UNKNOWN, go on" },
    { "export-name", case_export_name, "NBD_OPT_EXPORT_NAME with and without NO_ZEROES" },
    { "structured-off", case_structured_off, "simple replies when structured not asked" },
    { "meta-context", case_meta_context, "LIST/SET_META_CONTEXT for base:allocation" },
    { "meta-context-wildcard", case_meta_context_wildcard,
      "SET_META_CONTEXT \"base:\" selects nothing" },
    { "block-status", case_block_status, "base:allocation: data, trimmed, zeroed, holes" },
};

int main(int argc, char **argv)
{
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
