/* Counters of the NBD server side, shared by all connections. */
#ifndef SWAPCOPY_SERVER_STATS_H
#define SWAPCOPY_SERVER_STATS_H

#include <glib.h>
#include <stdint.h>

#include "latency-hist.h"
#include "nbd-proto.h"

typedef struct {
    gint64 started_us;                 /* g_get_monotonic_time() at reset */
    uint64_t connections_current;
    uint64_t connections_total;
    uint64_t connections_refused;      /* over --max-connections */
    uint64_t handshakes_failed;        /* closed before transmission */
    uint64_t requests[NBD_CMD_COUNT];
    uint64_t requests_invalid;         /* unknown command or malformed */
    uint64_t errors;                   /* replies with a non-zero error */
    uint64_t bytes_read;
    uint64_t bytes_written;
    LatencyHist latency;               /* request read -> reply sent */
} ServerStats;

void server_stats_reset(ServerStats *s);
void server_stats_request(ServerStats *s, unsigned cmd, uint32_t err,
                          uint64_t bytes, uint64_t latency_us);
static inline void stat_inc(uint64_t *counter, int64_t delta)
{
    __atomic_add_fetch(counter, (uint64_t)delta, __ATOMIC_RELAXED);
}
/* Appends the "uptime_s", "connections", "requests", "errors", "bytes" and
 * "latency_us" members (no enclosing braces). */
void server_stats_to_json(const ServerStats *s, GString *out);

#endif
