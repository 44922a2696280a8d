#include "server-stats.h"

#include <string.h>

static const char *const cmd_names[NBD_CMD_COUNT] = {
    "read", "write", "disc", "flush", "trim", "cache", "write_zeroes", "block_status",
};

void server_stats_reset(ServerStats *s)
{
    memset(s, 0, sizeof *s);
    s->started_us = g_get_monotonic_time();
}

void server_stats_request(ServerStats *s, unsigned cmd, uint32_t err,
                          uint64_t bytes, uint64_t latency_us)
{
    if (cmd < NBD_CMD_COUNT)
        stat_inc(&s->requests[cmd], 1);
    else
        stat_inc(&s->requests_invalid, 1);
    if (err) {
        stat_inc(&s->errors, 1);
    } else if (cmd == NBD_CMD_READ) {
        stat_inc(&s->bytes_read, (int64_t)bytes);
    } else if (cmd == NBD_CMD_WRITE) {
        stat_inc(&s->bytes_written, (int64_t)bytes);
    }
    latency_hist_add(&s->latency, latency_us);
}

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

void server_stats_to_json(const ServerStats *s, GString *out)
{
    g_string_append_printf(out,
        "\"uptime_s\":%.3f,\"connections\":{\"current\":%" G_GUINT64_FORMAT
        ",\"total\":%" G_GUINT64_FORMAT ",\"refused\":%" G_GUINT64_FORMAT
        ",\"handshakes_failed\":%" G_GUINT64_FORMAT "},\"requests\":{",
        (double)(g_get_monotonic_time() - s->started_us) / 1e6,
        LOAD(s->connections_current), LOAD(s->connections_total),
        LOAD(s->connections_refused), LOAD(s->handshakes_failed));
    for (unsigned i = 0; i < NBD_CMD_COUNT; i++)
        g_string_append_printf(out, "\"%s\":%" G_GUINT64_FORMAT ",", cmd_names[i],
                               LOAD(s->requests[i]));
    g_string_append_printf(out,
        "\"invalid\":%" G_GUINT64_FORMAT "},\"errors\":%" G_GUINT64_FORMAT
        ",\"bytes\":{\"read\":%" G_GUINT64_FORMAT ",\"written\":%" G_GUINT64_FORMAT
        "},\"latency_us\":",
        LOAD(s->requests_invalid), LOAD(s->errors), LOAD(s->bytes_read),
        LOAD(s->bytes_written));
    latency_hist_to_json(&s->latency, out);
}
