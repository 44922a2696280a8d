/* Blocking socket I/O for the NBD server: a small read buffer so that a
 * burst of request headers costs one read(2), and all-or-nothing writes. */
#ifndef SWAPCOPY_WIRE_H
#define SWAPCOPY_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

#define WIRE_BUF_SIZE (64 * 1024)

typedef struct {
    int fd;
    size_t start, end;          /* unread bytes are buf[start, end) */
    unsigned char buf[WIRE_BUF_SIZE];
} WireReader;

void wire_reader_init(WireReader *r, int fd);

/* Read exactly len bytes. Returns 0, or -1 with errno set (0 on a clean
 * end of stream before the first byte, ECONNRESET on a truncated one). */
int wire_read(WireReader *r, void *dst, size_t len);

/* Read and throw away len bytes (a payload we refuse but must consume to
 * stay in step with the client). Same return convention as wire_read. */
int wire_skip(WireReader *r, uint64_t len);

/* Write every byte of iov, retrying short writes and EINTR. 0 or -1/errno. */
int wire_writev(int fd, struct iovec *iov, int iovcnt);
int wire_write(int fd, const void *buf, size_t len);

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
