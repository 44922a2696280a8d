/* Requests the server must refuse, sent through libnbd with its client-side
 * checks turned off (nbd_set_strict_mode 0): out-of-range offsets, lengths
 * of 0 or above the 32 MiB maximum, unknown or inapplicable flags. Each
 * must fail with the error proto.md (and the shared design) names, and
 * afterwards the same connection still works and no data outside the
 * request changed. Every case runs once with structured replies (errors
 * come as error chunks) and once with simple replies. */
#include "proto-common.h"

#define SCRATCH_OFF (30 * MiB)   /* a written range requests must not alter */
#define SCRATCH_LEN (64 * KiB)
#define SCRATCH_SEED 4242

typedef struct {
    struct nbd_handle *h;
    uint64_t size;
    bool structured;
    const char *mode;
} Conn;

static Conn conn_open(const char *sock, bool structured)
{
    Conn c = { .h = handle_new(), .structured = structured,
               .mode = structured ? "structured replies" : "simple replies" };
    nbd_ok(nbd_set_export_name(c.h, "swap"), "nbd_set_export_name");
    nbd_ok(nbd_set_request_structured_replies(c.h, structured),
           "nbd_set_request_structured_replies");
    if (structured)
        nbd_ok(nbd_add_meta_context(c.h, LIBNBD_CONTEXT_BASE_ALLOCATION), "nbd_add_meta_context");
    handle_connect(c.h, sock);
    /* Let every malformed request through to the server. */
    nbd_ok(nbd_set_strict_mode(c.h, 0), "nbd_set_strict_mode");
    if (nbd_get_structured_replies_negotiated(c.h) != structured)
        fail("structured replies: wanted %d, negotiated %d", structured,
             nbd_get_structured_replies_negotiated(c.h));
    c.size = (uint64_t)export_size(c.h);
    canary_write(c.h);
    write_pattern(c.h, SCRATCH_OFF, SCRATCH_LEN, SCRATCH_SEED);
    note("--- %s: canaries and scratch data written", c.mode);
    return c;
}

/* After a refused request: the connection is usable, nothing moved. */
static void still_works(Conn *c, const char *after)
{
    char when[256];
    snprintf(when, sizeof when, "after %s", after);
    if (!nbd_aio_is_ready(c->h))
        fail("the connection is no longer usable %s (%s)", when,
             nbd_aio_is_dead(c->h) ? "the server dropped it" : "unexpected state");
    canary_verify(c->h, when);
    verify_range(c->h, SCRATCH_OFF, SCRATCH_LEN, SCRATCH_SEED, when);
    write_pattern(c->h, SCRATCH_OFF + SCRATCH_LEN, 4096, 77);
    verify_range(c->h, SCRATCH_OFF + SCRATCH_LEN, 4096, 77, when);
}

static void conn_close(Conn *c)
{
    nbd_ok(nbd_shutdown(c->h, 0), "nbd_shutdown");
    nbd_close(c->h);
}

/* Run body once per reply mode, each on a fresh connection. */
static void both_modes(const char *sock, void (*body)(Conn *c))
{
    for (int s = 1; s >= 0; s--) {
        Conn c = conn_open(sock, s);
        body(&c);
        conn_close(&c);
    }
}

#define EXPECT(call, err, what)                                                         \
    do {                                                                                \
        char what_[256];                                                                \
        snprintf(what_, sizeof what_, "%s [%s]", what, c->mode);                        \
        expect_error((call), (err), what_);                                             \
        still_works(c, what_);                                                          \
    } while (0)

static int count_extents(void *opaque, const char *ctx, uint64_t off, uint32_t *e, size_t n,
                         int *error)
{
    (void)ctx;
    (void)off;
    (void)e;
    (void)error;
    *(size_t *)opaque += n / 2;
    return 0;
}

static nbd_extent_callback extents_counter(size_t *n)
{
    return (nbd_extent_callback){ .callback = count_extents, .user_data = n };
}

static uint8_t *big_buffer(size_t len)
{
    uint8_t *b = xmalloc(len);
    fill_pattern(b, len, 0, 999);
    return b;
}

static void body_read_out_of_range(Conn *c)
{
    uint8_t *b = big_buffer(64 * KiB);
    EXPECT(nbd_pread(c->h, b, 8192, c->size - 4096, 0), EINVAL,
           "READ of 8 KiB straddling the end");
    EXPECT(nbd_pread(c->h, b, 1, c->size, 0), EINVAL, "READ of 1 byte at the export size");
    EXPECT(nbd_pread(c->h, b, 4096, c->size + 1 * MiB, 0), EINVAL, "READ 1 MiB past the end");
    EXPECT(nbd_pread(c->h, b, 4096, UINT64_C(1) << 63, 0), EINVAL, "READ at offset 2^63");
    EXPECT(nbd_pread(c->h, b, 64 * KiB, UINT64_MAX - 4095, 0), EINVAL,
           "READ whose offset+length wraps past 2^64");
    free(b);
}

static void body_write_out_of_range(Conn *c)
{
    uint8_t *b = big_buffer(64 * KiB);
    /* The tail canary covers the bytes just before the end: a partial
     * write of the in-range part would show there. */
    EXPECT(nbd_pwrite(c->h, b, 8192, c->size - 4096, 0), ENOSPC,
           "WRITE of 8 KiB straddling the end");
    EXPECT(nbd_pwrite(c->h, b, 1, c->size, 0), ENOSPC, "WRITE of 1 byte at the export size");
    EXPECT(nbd_pwrite(c->h, b, 4096, UINT64_C(1) << 63, 0), ENOSPC, "WRITE at offset 2^63");
    EXPECT(nbd_pwrite(c->h, b, 64 * KiB, UINT64_MAX - 4095, 0), ENOSPC,
           "WRITE whose offset+length wraps past 2^64 (could land at offset 0)");
    EXPECT(nbd_zero(c->h, 8192, c->size - 4096, 0), ENOSPC,
           "WRITE_ZEROES straddling the end");
    EXPECT(nbd_zero(c->h, 64 * KiB, UINT64_MAX - 4095, 0), ENOSPC,
           "WRITE_ZEROES whose offset+length wraps past 2^64");
    free(b);
}

static void body_other_out_of_range(Conn *c)
{
    size_t n = 0;
    EXPECT(nbd_trim(c->h, 8192, c->size - 4096, 0), EINVAL, "TRIM straddling the end");
    EXPECT(nbd_trim(c->h, 64 * KiB, UINT64_MAX - 4095, 0), EINVAL,
           "TRIM whose offset+length wraps past 2^64");
    EXPECT(nbd_cache(c->h, 8192, c->size - 4096, 0), EINVAL, "CACHE straddling the end");
    EXPECT(nbd_cache(c->h, 4096, c->size, 0), EINVAL, "CACHE at the export size");
    if (c->structured) {
        EXPECT(nbd_block_status(c->h, 8192, c->size, extents_counter(&n), 0), EINVAL,
               "BLOCK_STATUS at the export size");
        EXPECT(nbd_block_status(c->h, 4096, UINT64_MAX - 1023, extents_counter(&n), 0), EINVAL,
               "BLOCK_STATUS whose offset+length wraps past 2^64");
    }
}

static void body_zero_length(Conn *c)
{
    uint8_t b[16];
    size_t n = 0;
    EXPECT(nbd_pread(c->h, b, 0, 4096, 0), EINVAL, "READ of length 0");
    EXPECT(nbd_pread(c->h, b, 0, c->size, 0), EINVAL, "READ of length 0 at the export size");
    EXPECT(nbd_pwrite(c->h, b, 0, SCRATCH_OFF, 0), EINVAL, "WRITE of length 0");
    EXPECT(nbd_trim(c->h, 0, SCRATCH_OFF, 0), EINVAL, "TRIM of length 0");
    EXPECT(nbd_zero(c->h, 0, SCRATCH_OFF, 0), EINVAL, "WRITE_ZEROES of length 0");
    EXPECT(nbd_cache(c->h, 0, SCRATCH_OFF, 0), EINVAL, "CACHE of length 0");
    if (c->structured)
        EXPECT(nbd_block_status(c->h, 0, SCRATCH_OFF, extents_counter(&n), 0), EINVAL,
               "BLOCK_STATUS of length 0");
}

static void body_too_large(Conn *c)
{
    const size_t big = 48 * MiB;
    uint8_t *b = big_buffer(big);
    EXPECT(nbd_pread(c->h, b, NBD_MAX_PAYLOAD + 1, 0, 0), EINVAL, "READ of 32 MiB + 1");
    EXPECT(nbd_pread(c->h, b, 33 * MiB, 0, 0), EINVAL, "READ of 33 MiB");
    EXPECT(nbd_pread(c->h, b, big, 0, 0), EINVAL, "READ of 48 MiB");
    /* The payload follows the header; the server must read it and stay in
     * step, and none of it may land (offset 0 is the head canary). */
    EXPECT(nbd_pwrite(c->h, b, NBD_MAX_PAYLOAD + 1, 0, 0), EINVAL,
           "WRITE of 32 MiB + 1 at offset 0 (payload sent)");
    EXPECT(nbd_pwrite(c->h, b, 33 * MiB, 0, 0), EINVAL, "WRITE of 33 MiB at offset 0");
    EXPECT(nbd_pwrite(c->h, b, big, 0, LIBNBD_CMD_FLAG_FUA), EINVAL,
           "WRITE of 48 MiB with FUA at offset 0");
    /* The largest allowed size still works. */
    uint8_t *r = xmalloc(NBD_MAX_PAYLOAD);
    nbd_ok(nbd_pread(c->h, r, NBD_MAX_PAYLOAD, 0, 0), "READ of exactly 32 MiB");
    check_pattern(r, CANARY_LEN, 0, CANARY_SEED_HEAD, "head canary in a 32 MiB READ");
    free(r);
    note("READ of exactly 32 MiB still works [%s]", c->mode);
    free(b);
}

static void body_unknown_flags(Conn *c)
{
    uint8_t b[4096];
    size_t n = 0;
    fill_pattern(b, sizeof b, 0, 555);
    EXPECT(nbd_pread(c->h, b, sizeof b, SCRATCH_OFF, 0x40), EINVAL, "READ with flag 0x40");
    EXPECT(nbd_pread(c->h, b, sizeof b, SCRATCH_OFF, 0x8000), EINVAL, "READ with flag 0x8000");
    /* still_works() checks the scratch range the write aimed at. */
    EXPECT(nbd_pwrite(c->h, b, sizeof b, SCRATCH_OFF, 0x100), EINVAL,
           "WRITE with flag 0x100 (must not be carried out)");
    EXPECT(nbd_pwrite(c->h, b, sizeof b, SCRATCH_OFF, 0x20 | LIBNBD_CMD_FLAG_FUA), EINVAL,
           "WRITE with FUA and flag 0x20 (NBD_CMD_FLAG_PAYLOAD_LEN, not negotiated)");
    EXPECT(nbd_trim(c->h, 4096, SCRATCH_OFF, 0x40), EINVAL,
           "TRIM with flag 0x40 (must not be carried out)");
    EXPECT(nbd_zero(c->h, 4096, SCRATCH_OFF, 0x200), EINVAL,
           "WRITE_ZEROES with flag 0x200 (must not be carried out)");
    EXPECT(nbd_cache(c->h, 4096, SCRATCH_OFF, 0x40), EINVAL, "CACHE with flag 0x40");
    EXPECT(nbd_flush(c->h, 0x4000), EINVAL, "FLUSH with flag 0x4000");
    if (c->structured)
        EXPECT(nbd_block_status(c->h, 4096, SCRATCH_OFF, extents_counter(&n), 0x80), EINVAL,
               "BLOCK_STATUS with flag 0x80");
}

/* proto.md, "Command flags": the server MUST accept NBD_CMD_FLAG_FUA on
 * every command once NBD_FLAG_SEND_FUA is advertised, ignoring it where
 * nothing is written ("existing clients are known to set this bit on
 * other commands"). */
static void body_fua_everywhere(Conn *c)
{
    uint8_t *b = xmalloc(SCRATCH_LEN);
    if (nbd_pread(c->h, b, SCRATCH_LEN, SCRATCH_OFF, LIBNBD_CMD_FLAG_FUA) == -1)
        fail("READ with NBD_CMD_FLAG_FUA [%s] was refused (%s); proto.md: the server MUST "
             "accept FUA on all commands when NBD_FLAG_SEND_FUA is advertised", c->mode,
             nbd_get_error());
    check_pattern(b, SCRATCH_LEN, SCRATCH_OFF, SCRATCH_SEED, "READ with FUA");
    note("READ with FUA accepted [%s]", c->mode);
    free(b);
    if (nbd_flush(c->h, LIBNBD_CMD_FLAG_FUA) == -1)
        fail("FLUSH with NBD_CMD_FLAG_FUA [%s] was refused (%s); the server MUST accept FUA "
             "on all commands", c->mode, nbd_get_error());
    note("FLUSH with FUA accepted [%s]", c->mode);
    if (nbd_cache(c->h, 4096, SCRATCH_OFF, LIBNBD_CMD_FLAG_FUA) == -1)
        fail("CACHE with NBD_CMD_FLAG_FUA [%s] was refused (%s); the server MUST accept FUA "
             "on all commands", c->mode, nbd_get_error());
    note("CACHE with FUA accepted [%s]", c->mode);
    if (c->structured) {
        size_t n = 0;
        if (nbd_block_status(c->h, 4096, SCRATCH_OFF, extents_counter(&n),
                             LIBNBD_CMD_FLAG_FUA) == -1)
            fail("BLOCK_STATUS with NBD_CMD_FLAG_FUA was refused (%s); the server MUST accept "
                 "FUA on all commands", nbd_get_error());
        note("BLOCK_STATUS with FUA accepted (%zu extents)", n);
    }
    still_works(c, "commands with FUA");
}

/* proto.md, "Error values": the server SHOULD answer EINVAL to a flag not
 * documented for the command it comes with. */
static void body_inapplicable_flags(Conn *c)
{
    uint8_t b[4096];
    fill_pattern(b, sizeof b, 0, 556);
    EXPECT(nbd_pwrite(c->h, b, sizeof b, SCRATCH_OFF, LIBNBD_CMD_FLAG_NO_HOLE), EINVAL,
           "WRITE with NBD_CMD_FLAG_NO_HOLE");
    EXPECT(nbd_trim(c->h, 4096, SCRATCH_OFF, LIBNBD_CMD_FLAG_FAST_ZERO), EINVAL,
           "TRIM with NBD_CMD_FLAG_FAST_ZERO");
    EXPECT(nbd_pread(c->h, b, sizeof b, SCRATCH_OFF, LIBNBD_CMD_FLAG_REQ_ONE), EINVAL,
           "READ with NBD_CMD_FLAG_REQ_ONE");
    EXPECT(nbd_cache(c->h, 4096, SCRATCH_OFF, LIBNBD_CMD_FLAG_NO_HOLE), EINVAL,
           "CACHE with NBD_CMD_FLAG_NO_HOLE");
}

/* Without a selected meta context, BLOCK_STATUS SHOULD fail with EINVAL. */
static void case_block_status_no_context(const char *sock)
{
    struct nbd_handle *h = connect_default(sock);
    nbd_ok(nbd_set_strict_mode(h, 0), "nbd_set_strict_mode");
    canary_write(h);
    size_t n = 0;
    expect_error(nbd_block_status(h, 4096, 0, extents_counter(&n), 0), EINVAL,
                 "BLOCK_STATUS without a negotiated meta context");
    canary_verify(h, "after BLOCK_STATUS without a meta context");
    nbd_ok(nbd_shutdown(h, 0), "nbd_shutdown");
    nbd_close(h);
}

#define BOTH(name) \
    static void case_##name(const char *sock) { both_modes(sock, body_##name); }
BOTH(read_out_of_range)
BOTH(write_out_of_range)
BOTH(other_out_of_range)
BOTH(zero_length)
BOTH(too_large)
BOTH(unknown_flags)
BOTH(fua_everywhere)
BOTH(inapplicable_flags)

static const TestCase cases[] = {
    { "read-out-of-range", case_read_out_of_range, "READ past the end / wrapping -> EINVAL" },
    { "write-out-of-range", case_write_out_of_range,
      "WRITE, WRITE_ZEROES past the end / wrapping -> ENOSPC" },
    { "other-out-of-range", case_other_out_of_range,
      "TRIM, CACHE, BLOCK_STATUS past the end -> EINVAL" },
    { "zero-length", case_zero_length, "every command with length 0 -> EINVAL" },
    { "too-large", case_too_large, "READ/WRITE above 32 MiB -> EINVAL, stream stays in step" },
    { "unknown-flags", case_unknown_flags, "unknown command flags -> EINVAL, not carried out" },
    { "fua-everywhere", case_fua_everywhere, "FUA is accepted on READ/FLUSH/CACHE/BLOCK_STATUS" },
    { "inapplicable-flags", case_inapplicable_flags,
      "known flags on the wrong command -> EINVAL" },
    { "block-status-no-context", case_block_status_no_context,
      "BLOCK_STATUS without meta context -> EINVAL" },
};

int main(int argc, char **argv)
{
    return run_cases(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
