/* Noticing a TCP peer that died silently: a link that drops every packet
 * (no reset, no FIN) must cost seconds, not TCP's ~15 minutes of
 * retransmissions. Used on both ends of a migration's connections. */
#ifndef SWAPCOPY_TCP_LIVENESS_H
#define SWAPCOPY_TCP_LIVENESS_H

#include <stdbool.h>

/* Data unacknowledged for this long kills the connection
 * (TCP_USER_TIMEOUT); an idle connection is probed after
 * TCP_LIVENESS_IDLE_S, every second, TCP_LIVENESS_PROBES times. */
#define TCP_LIVENESS_USER_TIMEOUT_MS 5000
#define TCP_LIVENESS_IDLE_S 5
#define TCP_LIVENESS_PROBES 5

/* Sets keepalive and TCP_USER_TIMEOUT on a connected TCP socket. false
 * with errno set if the kernel refused one of them. */
bool tcp_notice_dead_peer(int fd);

#endif
