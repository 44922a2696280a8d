/* Fixed newstyle negotiation (proto.md, "Newstyle negotiation" and "Option
 * types"): the server side. Each option is read whole, checked, answered. */
#include <errno.h>
#include <stdarg.h>
#include <string.h>

#include "limits.h"
#include "nbd-proto.h"
#include "server.h"

typedef enum { OPT_CONTINUE, OPT_TRANSMIT, OPT_CLOSE } OptResult;

static bool send_reply(Connection *c, uint32_t opt, uint32_t type, const void *data,
                       uint32_t len)
{
    unsigned char hdr[20];
    put_be64(hdr, NBD_REP_MAGIC);
    put_be32(hdr + 8, opt);
    put_be32(hdr + 12, type);
    put_be32(hdr + 16, len);
    struct iovec iov[2] = { { hdr, sizeof hdr }, { (void *)data, len } };
    if (wire_writev(&c->wire, iov, len ? 2 : 1) < 0) {
        g_debug("%s: handshake reply to option %u failed: %s", c->peer, opt, g_strerror(errno));
        return false;
    }
    return true;
}

/* Error replies carry a human-readable reason, which libnbd shows users. */
static bool send_error(Connection *c, uint32_t opt, uint32_t type, const char *fmt, ...)
    G_GNUC_PRINTF(4, 5);
static bool send_error(Connection *c, uint32_t opt, uint32_t type, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_debug("%s: option %u refused: %s", c->peer, opt, msg);
    return send_reply(c, opt, type, msg, (uint32_t)strlen(msg));
}

static OptResult opt_export_name(Connection *c, const char *data, uint32_t len)
{
    Export *e = export_set_find(&c->server->exports, data, len);
    if (!e) {
        /* NBD_OPT_EXPORT_NAME has no error reply: the spec says close. */
        g_message("%s: client asked for unknown export '%.*s'; closing", c->peer,
                  (int)MIN(len, 256u), data);
        return OPT_CLOSE;
    }
    unsigned char reply[10 + 124] = { 0 };
    put_be64(reply, e->size);
    put_be16(reply + 8, export_transmission_flags(e));
    if (wire_write(&c->wire, reply, c->no_zeroes ? 10 : sizeof reply) < 0)
        return OPT_CLOSE;
    c->export = e;
    return OPT_TRANSMIT;
}

static bool send_info_export(Connection *c, uint32_t opt, Export *e)
{
    unsigned char info[12];
    put_be16(info, NBD_INFO_EXPORT);
    put_be64(info + 2, e->size);
    put_be16(info + 10, export_transmission_flags(e));
    return send_reply(c, opt, NBD_REP_INFO, info, sizeof info);
}

static bool send_info_block_size(Connection *c, uint32_t opt)
{
    unsigned char info[14];
    put_be16(info, NBD_INFO_BLOCK_SIZE);
    put_be32(info + 2, 1);
    put_be32(info + 6, 4096);
    put_be32(info + 10, NBD_MAX_REQUEST);
    return send_reply(c, opt, NBD_REP_INFO, info, sizeof info);
}

static bool send_info_name(Connection *c, uint32_t opt, Export *e)
{
    size_t n = strlen(e->name);
    g_autofree unsigned char *info = g_malloc(2 + n);
    put_be16(info, NBD_INFO_NAME);
    memcpy(info + 2, e->name, n);
    return send_reply(c, opt, NBD_REP_INFO, info, (uint32_t)(2 + n));
}

/* NBD_INFO_DESCRIPTION: what the RAM is (export.h), for a destination
 * checking that it reconnected to the same source. */
static bool send_info_identity(Connection *c, uint32_t opt, Export *e)
{
    g_autofree char *text = g_strconcat(SWAPCOPY_IDENTITY_PREFIX, e->identity, NULL);
    size_t n = MIN(strlen(text), (size_t)NBD_MAX_STRING);
    g_autofree unsigned char *info = g_malloc(2 + n);
    put_be16(info, NBD_INFO_DESCRIPTION);
    memcpy(info + 2, text, n);
    return send_reply(c, opt, NBD_REP_INFO, info, (uint32_t)(2 + n));
}

/* The completion and readiness messages (nbd-proto.h): noted, and
 * acknowledged with the description of an empty read-only export, as
 * NBD_OPT_INFO must be. */
static OptResult opt_destination_word(Connection *c, uint32_t opt, bool ready)
{
    if (ready && !__atomic_exchange_n(&c->server->destination_ready, true, __ATOMIC_ACQ_REL))
        g_message("the destination %s reports that it is ready for the migration", c->peer);
    if (!ready && !__atomic_exchange_n(&c->server->destination_done, true, __ATOMIC_ACQ_REL))
        g_message("the destination %s reports that it has every page: this source is no "
                  "longer needed", c->peer);
    unsigned char info[12];
    put_be16(info, NBD_INFO_EXPORT);
    put_be64(info + 2, 0);
    put_be16(info + 10, NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY);
    return send_reply(c, opt, NBD_REP_INFO, info, sizeof info) &&
                   send_reply(c, opt, NBD_REP_ACK, NULL, 0)
               ? OPT_CONTINUE : OPT_CLOSE;
}

/* NBD_OPT_INFO and NBD_OPT_GO: name length, name, count, info requests. */
static OptResult opt_info_go(Connection *c, uint32_t opt, const unsigned char *d, uint32_t len)
{
    if (len < 6)
        return send_error(c, opt, NBD_REP_ERR_INVALID, "option payload of %u bytes is too "
                          "short for a name length and an information count", len)
                   ? OPT_CONTINUE : OPT_CLOSE;
    uint32_t name_len = get_be32(d);
    if (name_len > len - 6 || name_len > NBD_MAX_STRING)
        return send_error(c, opt, NBD_REP_ERR_INVALID, "export name length %u does not fit "
                          "the %u-byte option payload", name_len, len)
                   ? OPT_CONTINUE : OPT_CLOSE;
    const unsigned char *p = d + 4 + name_len;
    uint16_t nreq = get_be16(p);
    if ((uint64_t)4 + name_len + 2 + 2u * nreq != len)
        return send_error(c, opt, NBD_REP_ERR_INVALID, "%u information requests do not match "
                          "the %u-byte option payload", nreq, len)
                   ? OPT_CONTINUE : OPT_CLOSE;
    if (opt == NBD_OPT_INFO && name_len == strlen(SWAPCOPY_DONE_EXPORT) &&
        memcmp(d + 4, SWAPCOPY_DONE_EXPORT, name_len) == 0)
        return opt_destination_word(c, opt, false);
    if (opt == NBD_OPT_INFO && name_len == strlen(SWAPCOPY_READY_EXPORT) &&
        memcmp(d + 4, SWAPCOPY_READY_EXPORT, name_len) == 0)
        return opt_destination_word(c, opt, true);
    Export *e = export_set_find(&c->server->exports, (const char *)d + 4, name_len);
    if (!e)
        return send_error(c, opt, NBD_REP_ERR_UNKNOWN, "no export named '%.*s' (list them "
                          "with nbdinfo --list)", (int)MIN(name_len, 256u), (const char *)d + 4)
                   ? OPT_CONTINUE : OPT_CLOSE;
    bool want_name = false, want_description = false;
    for (uint16_t i = 0; i < nreq; i++) {
        uint16_t what = get_be16(p + 2 + 2 * i);
        want_name |= what == NBD_INFO_NAME;
        want_description |= what == NBD_INFO_DESCRIPTION;
    }
    /* Block sizes are sent unasked: they only tell a client what it may do. */
    if (!send_info_export(c, opt, e) || !send_info_block_size(c, opt) ||
        (want_name && !send_info_name(c, opt, e)) ||
        (want_description && e->identity && !send_info_identity(c, opt, e)) ||
        !send_reply(c, opt, NBD_REP_ACK, NULL, 0))
        return OPT_CLOSE;
    if (opt == NBD_OPT_GO) {
        c->export = e;
        return OPT_TRANSMIT;
    }
    return OPT_CONTINUE;
}

static OptResult opt_list(Connection *c, uint32_t len)
{
    if (len != 0)
        return send_error(c, NBD_OPT_LIST, NBD_REP_ERR_INVALID,
                          "NBD_OPT_LIST takes no payload, got %u bytes", len)
                   ? OPT_CONTINUE : OPT_CLOSE;
    GPtrArray *all = c->server->exports.exports;
    for (guint i = 0; i < all->len; i++) {
        Export *e = g_ptr_array_index(all, i);
        size_t n = strlen(e->name);
        g_autofree unsigned char *rep = g_malloc(4 + n);
        put_be32(rep, (uint32_t)n);
        memcpy(rep + 4, e->name, n);
        if (!send_reply(c, NBD_OPT_LIST, NBD_REP_SERVER, rep, (uint32_t)(4 + n)))
            return OPT_CLOSE;
    }
    return send_reply(c, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0) ? OPT_CONTINUE : OPT_CLOSE;
}

static bool query_matches_base_allocation(const unsigned char *q, uint32_t n, bool set)
{
    static const char ctx[] = NBD_META_BASE_ALLOCATION;
    /* "base:" lists every context of the namespace, but the spec says SET
     * must ignore that form: a client selects contexts by full name. */
    return (n == strlen(ctx) && memcmp(q, ctx, n) == 0) ||
           (!set && n == 5 && memcmp(q, "base:", 5) == 0);
}

/* NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT. We know one
 * context, base:allocation, with id 1. */
static OptResult opt_meta_context(Connection *c, uint32_t opt, const unsigned char *d,
                                  uint32_t len)
{
    bool set = opt == NBD_OPT_SET_META_CONTEXT;
    if (set && !c->structured)
        return send_error(c, opt, NBD_REP_ERR_INVALID, "negotiate structured replies "
                          "before setting a meta context")
                   ? OPT_CONTINUE : OPT_CLOSE;
    if (len < 8 || get_be32(d) > len - 8)
        return send_error(c, opt, NBD_REP_ERR_INVALID, "malformed meta context request "
                          "(%u bytes)", len)
                   ? OPT_CONTINUE : OPT_CLOSE;
    uint32_t name_len = get_be32(d);
    const unsigned char *p = d + 4 + name_len, *end = d + len;
    uint32_t nq = get_be32(p);
    p += 4;
    bool want = false;
    for (uint32_t i = 0; i < nq; i++) {
        if (end - p < 4 || get_be32(p) > (uint64_t)(end - p - 4))
            return send_error(c, opt, NBD_REP_ERR_INVALID, "meta context query %u runs past "
                              "the end of the option payload", i)
                       ? OPT_CONTINUE : OPT_CLOSE;
        uint32_t qlen = get_be32(p);
        if (query_matches_base_allocation(p + 4, qlen, set))
            want = true;
        p += 4 + qlen;
    }
    if (p != end)
        return send_error(c, opt, NBD_REP_ERR_INVALID, "%td trailing bytes after the meta "
                          "context queries", end - p)
                   ? OPT_CONTINUE : OPT_CLOSE;
    if (!export_set_find(&c->server->exports, (const char *)d + 4, name_len))
        return send_error(c, opt, NBD_REP_ERR_UNKNOWN, "no export named '%.*s'",
                          (int)MIN(name_len, 256u), (const char *)d + 4)
                   ? OPT_CONTINUE : OPT_CLOSE;
    if (nq == 0 && !set)
        want = true;   /* an empty list query lists everything */
    if (set)
        c->meta_base_allocation = want;
    if (want) {
        static const char ctx[] = NBD_META_BASE_ALLOCATION;
        unsigned char rep[4 + sizeof ctx - 1];
        put_be32(rep, NBD_META_ID_BASE_ALLOCATION);
        memcpy(rep + 4, ctx, sizeof ctx - 1);
        if (!send_reply(c, opt, NBD_REP_META_CONTEXT, rep, sizeof rep))
            return OPT_CLOSE;
    }
    return send_reply(c, opt, NBD_REP_ACK, NULL, 0) ? OPT_CONTINUE : OPT_CLOSE;
}

/* NBD_OPT_STARTTLS: ACK, then the TLS handshake on the same socket; the
 * negotiation goes on inside TLS, forgetting what was agreed outside it
 * (proto.md: a client must not rely on it, and an attacker on the path
 * could have chosen it). */
static OptResult opt_starttls(Connection *c, uint32_t len)
{
    Server *s = c->server;
    if (!s->tls)
        return send_error(c, NBD_OPT_STARTTLS, NBD_REP_ERR_UNSUP, "TLS is not enabled on this "
                          "server (nbd-pagesrv --tls-psk FILE or --tls-certificates DIR)")
                   ? OPT_CONTINUE : OPT_CLOSE;
    if (len != 0)
        return send_error(c, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no "
                          "payload, got %u bytes", len)
                   ? OPT_CONTINUE : OPT_CLOSE;
    if (c->tls_active)
        return send_error(c, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, "TLS is already on")
                   ? OPT_CONTINUE : OPT_CLOSE;
    if (!send_reply(c, NBD_OPT_STARTTLS, NBD_REP_ACK, NULL, 0))
        return OPT_CLOSE;
    g_autoptr(GError) error = NULL;
    if (!tls_server_start(s->tls, &c->wire, &error)) {
        g_message("%s: %s; closing", c->peer, error->message);
        return OPT_CLOSE;
    }
    c->tls_active = true;
    c->structured = false;
    c->meta_base_allocation = false;
    g_autofree char *how = tls_session_describe(&c->wire);
    g_debug("%s: TLS is on (%s)", c->peer, how);
    return OPT_CONTINUE;
}

static OptResult handle_option(Connection *c, uint32_t opt, unsigned char *data, uint32_t len)
{
    /* --tls require: on TCP, a client learns nothing (not even the export
     * list) and reaches nothing before TLS is up. */
    if (c->server->tls_mode == TLS_REQUIRE && !c->local && !c->tls_active &&
        opt != NBD_OPT_STARTTLS && opt != NBD_OPT_ABORT) {
        if (opt == NBD_OPT_EXPORT_NAME) {
            g_message("%s: NBD_OPT_EXPORT_NAME without TLS, which this server requires; "
                      "closing", c->peer);
            return OPT_CLOSE;
        }
        return send_error(c, opt, NBD_REP_ERR_TLS_REQD, "this server requires TLS: connect "
                          "with nbds:// (tls-psk-file= or tls-certificates=) or --tls-psk")
                   ? OPT_CONTINUE : OPT_CLOSE;
    }
    switch (opt) {
    case NBD_OPT_STARTTLS:
        return opt_starttls(c, len);
    case NBD_OPT_EXPORT_NAME:
        return opt_export_name(c, (const char *)data, len);
    case NBD_OPT_ABORT:
        /* The client may already be gone; the reply is a courtesy. */
        send_reply(c, opt, NBD_REP_ACK, NULL, 0);
        return OPT_CLOSE;
    case NBD_OPT_LIST:
        return opt_list(c, len);
    case NBD_OPT_INFO:
    case NBD_OPT_GO:
        return opt_info_go(c, opt, data, len);
    case NBD_OPT_STRUCTURED_REPLY:
        if (len != 0)
            return send_error(c, opt, NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes "
                              "no payload, got %u bytes", len)
                       ? OPT_CONTINUE : OPT_CLOSE;
        c->structured = true;
        return send_reply(c, opt, NBD_REP_ACK, NULL, 0) ? OPT_CONTINUE : OPT_CLOSE;
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
        return opt_meta_context(c, opt, data, len);
    default:
        return send_error(c, opt, NBD_REP_ERR_UNSUP, "option %u is not supported by "
                          "nbd-pagesrv", opt)
                   ? OPT_CONTINUE : OPT_CLOSE;
    }
}

/* Read and answer options until the client enters transmission (true) or
 * leaves, breaks the protocol or runs out of time or options (false). */
static bool negotiate(Connection *c)
{
    unsigned char greeting[18];
    put_be64(greeting, NBD_MAGIC);
    put_be64(greeting + 8, NBD_IHAVEOPT);
    put_be16(greeting + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    if (wire_write(&c->wire, greeting, sizeof greeting) < 0)
        return false;

    unsigned char cf[4];
    if (wire_read(&c->wire, cf, sizeof cf) < 0)
        return false;
    uint32_t client_flags = get_be32(cf);
    if (client_flags & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
        g_message("%s: unknown client flags 0x%x; closing as the protocol requires",
                  c->peer, client_flags);
        return false;
    }
    c->no_zeroes = client_flags & NBD_FLAG_C_NO_ZEROES;

    unsigned max_options = LIMIT_OPTIONS_BASE +
                           LIMIT_OPTIONS_PER_EXPORT * c->server->exports.exports->len;
    for (unsigned n = 0;; n++) {
        unsigned char hdr[16];
        if (wire_read(&c->wire, hdr, sizeof hdr) < 0)
            return false;
        uint32_t opt = get_be32(hdr + 8), len = get_be32(hdr + 12);
        if (get_be64(hdr) != NBD_IHAVEOPT) {
            g_message("%s: bad option magic 0x%016" G_GINT64_MODIFIER "x; closing", c->peer,
                      get_be64(hdr));
            return false;
        }
        if (n >= max_options) {
            /* Each option costs a reply; a client that never ends the
             * handshake is not negotiating. */
            g_message("%s: more than %u options in one handshake; closing", c->peer,
                      max_options);
            return false;
        }
        if (len > NBD_MAX_OPTION) {
            /* Skip what we will not buffer; a client that lied about the
             * length then fails at the next header (or the deadline). */
            if (wire_skip(&c->wire, len) < 0)
                return false;
            if (opt == NBD_OPT_EXPORT_NAME)
                return false;
            if (!send_error(c, opt, NBD_REP_ERR_TOO_BIG, "option payload of %u bytes is larger "
                            "than the %u this server accepts", len, NBD_MAX_OPTION))
                return false;
            continue;
        }
        g_autofree unsigned char *data = g_try_malloc(len + 1);
        if (!data) {
            g_warning("%s: out of memory for a %u-byte option payload; closing", c->peer, len);
            return false;
        }
        if (wire_read(&c->wire, data, len) < 0)
            return false;
        data[len] = 0;
        switch (handle_option(c, opt, data, len)) {
        case OPT_CONTINUE:
            break;
        case OPT_TRANSMIT:
            return true;
        case OPT_CLOSE:
            return false;
        }
    }
}

bool nbd_handshake(Connection *c)
{
    /* The whole handshake, TLS included, has one deadline: a peer that
     * connects and stalls (or trickles) loses its slot. */
    c->wire.deadline_us = g_get_monotonic_time() + (gint64)c->server->handshake_timeout_s * G_USEC_PER_SEC;
    bool ok = negotiate(c);
    if (!ok && g_get_monotonic_time() >= c->wire.deadline_us)
        g_message("%s: the handshake was not over within %d s; closing", c->peer,
                  c->server->handshake_timeout_s);
    c->wire.deadline_us = 0;
    return ok;
}
