#include "wire.h"

#include <errno.h>
#include <unistd.h>

void wire_reader_init(WireReader *r, int fd)
{
    r->fd = fd;
    r->start = r->end = 0;
}

/* Refill the buffer; returns bytes read, 0 at end of stream, -1 on error. */
static ssize_t refill(WireReader *r)
{
    ssize_t n;
    r->start = r->end = 0;
    do {
        n = read(r->fd, r->buf, sizeof r->buf);
    } while (n < 0 && errno == EINTR);
    if (n > 0)
        r->end = (size_t)n;
    return n;
}

int wire_read(WireReader *r, void *dst, size_t len)
{
    unsigned char *out = dst;
    size_t got = 0;

    while (got < len) {
        size_t avail = r->end - r->start;
        if (avail == 0) {
            /* Large payloads go straight into the destination. */
            if (len - got >= sizeof r->buf) {
                ssize_t n;
                do {
                    n = read(r->fd, out + got, len - got);
                } while (n < 0 && errno == EINTR);
                if (n < 0)
                    return -1;
                if (n == 0) {
                    errno = got ? ECONNRESET : 0;
                    return -1;
                }
                got += (size_t)n;
                continue;
            }
            ssize_t n = refill(r);
            if (n < 0)
                return -1;
            if (n == 0) {
                errno = got ? ECONNRESET : 0;
                return -1;
            }
            continue;
        }
        size_t take = avail < len - got ? avail : len - got;
        memcpy(out + got, r->buf + r->start, take);
        r->start += take;
        got += take;
    }
    return 0;
}

int wire_skip(WireReader *r, uint64_t len)
{
    while (len > 0) {
        size_t avail = r->end - r->start;
        if (avail == 0) {
            ssize_t n = refill(r);
            if (n < 0)
                return -1;
            if (n == 0) {
                errno = ECONNRESET;
                return -1;
            }
            continue;
        }
        size_t take = avail < len ? avail : (size_t)len;
        r->start += take;
        len -= take;
    }
    return 0;
}

int wire_writev(int fd, struct iovec *iov, int iovcnt)
{
    while (iovcnt > 0) {
        ssize_t n = writev(fd, iov, iovcnt);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        size_t done = (size_t)n;
        while (iovcnt > 0 && done >= iov->iov_len) {
            done -= iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (char *)iov->iov_base + done;
            iov->iov_len -= done;
        }
    }
    return 0;
}

int wire_write(int fd, const void *buf, size_t len)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    return wire_writev(fd, &iov, 1);
}
