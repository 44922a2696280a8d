/* Blocking socket I/O for the NBD server: a small read buffer so that a
 * burst of request headers costs one read(2), all-or-nothing writes, and
 * the deadlines that keep a silent peer from holding a thread for ever.
 *
 * A Wire may carry a layer (TLS, tls.c) between these functions and the
 * socket; the layer reaches the socket through wire_raw_recv() and
 * wire_raw_sendv(), so the deadlines hold under it too. */
#ifndef SWAPCOPY_WIRE_H
#define SWAPCOPY_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>

#define WIRE_BUF_SIZE (64 * 1024)

typedef struct Wire Wire;

typedef struct {
    /* Like read(2): bytes read, 0 at the end of the stream, -1 with errno. */
    ssize_t (*recv)(Wire *w, void *buf, size_t len);
    /* Write every byte or fail: 0, or -1 with errno. */
    int (*sendv)(Wire *w, const struct iovec *iov, int iovcnt);
} WireLayer;

struct Wire {
    int fd;
    const WireLayer *layer;     /* NULL: the socket itself */
    void *layer_data;
    /* Reads and writes fail with ETIMEDOUT past this g_get_monotonic_time()
     * (0: no deadline): a handshake's whole budget. */
    int64_t deadline_us;
    /* A read that waits this long for its next byte fails with ETIMEDOUT
     * (0: wait for ever): a payload that stops arriving. */
    int stall_ms;
    /* Bytes read from the socket before the layer was set, which belong
     * to it (a TLS ClientHello sent right behind NBD_OPT_STARTTLS). */
    unsigned char *carry;
    size_t carry_off, carry_len;
    size_t start, end;          /* unread bytes are buf[start, end) */
    unsigned char buf[WIRE_BUF_SIZE];
};

void wire_init(Wire *w, int fd);
/* Put a layer between the wire and the socket; what the buffer holds
 * unread goes to the layer first. */
void wire_set_layer(Wire *w, const WireLayer *layer, void *data);
void wire_clear(Wire *w);

/* Read exactly len bytes. Returns 0, or -1 with errno set (0 on a clean
 * end of stream before the first byte, ECONNRESET on a truncated one,
 * ETIMEDOUT past a deadline). */
int wire_read(Wire *w, void *dst, size_t len);

/* Read and throw away len bytes (a payload we refuse but must consume to
 * stay in step with the client), through the small buffer only. Same
 * return convention as wire_read. */
int wire_skip(Wire *w, uint64_t len);

/* Write every byte of iov (through the layer, if any). 0 or -1/errno. */
int wire_writev(Wire *w, const struct iovec *iov, int iovcnt);
int wire_write(Wire *w, const void *buf, size_t len);

/* The socket itself, honouring the deadlines; for layers. wire_raw_recv
 * first hands out the carried bytes (wire_set_layer). */
ssize_t wire_raw_recv(Wire *w, void *buf, size_t len);
int wire_raw_sendv(Wire *w, const struct iovec *iov, int iovcnt);

static inline void put_be16(unsigned char *p, uint16_t v) { p[0] = v >> 8; p[1] = v; }
static inline void put_be32(unsigned char *p, uint32_t v)
{
    put_be16(p, v >> 16);
    put_be16(p + 2, v);
}
static inline void put_be64(unsigned char *p, uint64_t v)
{
    put_be32(p, v >> 32);
    put_be32(p + 4, v);
}
static inline uint16_t get_be16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t get_be32(const unsigned char *p)
{
    return (uint32_t)get_be16(p) << 16 | get_be16(p + 2);
}
static inline uint64_t get_be64(const unsigned char *p)
{
    return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

#endif
