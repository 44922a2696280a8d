#include "wire.h"

#include <errno.h>
#include <glib.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

void wire_init(Wire *w, int fd)
{
    memset(w, 0, offsetof(Wire, buf));
    w->fd = fd;
}

void wire_set_layer(Wire *w, const WireLayer *layer, void *data)
{
    g_free(w->carry);
    w->carry_len = w->end - w->start;
    w->carry_off = 0;
    w->carry = w->carry_len ? g_memdup2(w->buf + w->start, w->carry_len) : NULL;
    w->start = w->end = 0;
    w->layer = layer;
    w->layer_data = data;
}

void wire_clear(Wire *w)
{
    g_free(w->carry);
    w->carry = NULL;
    w->carry_len = w->carry_off = 0;
}

/* Wait until fd is ready for events, within the deadline and the stall
 * limit. 0, or -1 with errno (ETIMEDOUT). */
static int wait_ready(Wire *w, short events, bool stall_applies)
{
    if (!w->deadline_us && !(stall_applies && w->stall_ms))
        return 0;
    for (;;) {
        int ms = -1;
        if (w->deadline_us) {
            int64_t left = w->deadline_us - g_get_monotonic_time();
            if (left <= 0) {
                errno = ETIMEDOUT;
                return -1;
            }
            ms = (int)MIN(left / 1000 + 1, G_MAXINT);
        }
        if (stall_applies && w->stall_ms && (ms < 0 || w->stall_ms < ms))
            ms = w->stall_ms;
        struct pollfd pfd = { .fd = w->fd, .events = events };
        int n = poll(&pfd, 1, ms);
        if (n > 0)
            return 0;   /* readable, writable, or an error the I/O call reports */
        if (n < 0 && errno != EINTR)
            return -1;
        if (n == 0 && (!w->deadline_us || g_get_monotonic_time() >= w->deadline_us ||
                       (stall_applies && w->stall_ms && ms == w->stall_ms))) {
            errno = ETIMEDOUT;
            return -1;
        }
    }
}

ssize_t wire_raw_recv(Wire *w, void *buf, size_t len)
{
    if (w->carry_off < w->carry_len) {
        size_t take = MIN(w->carry_len - w->carry_off, len);
        memcpy(buf, w->carry + w->carry_off, take);
        w->carry_off += take;
        return (ssize_t)take;
    }
    for (;;) {
        if (wait_ready(w, POLLIN, true) < 0)
            return -1;
        ssize_t n = read(w->fd, buf, len);
        if (n >= 0 || errno != EINTR)
            return n;
    }
}

int wire_raw_sendv(Wire *w, const struct iovec *iov_in, int iovcnt)
{
    struct iovec local[8], *iov = local;
    g_autofree struct iovec *heap = NULL;
    if (iovcnt > (int)G_N_ELEMENTS(local))
        iov = heap = g_new(struct iovec, iovcnt);
    memcpy(iov, iov_in, sizeof *iov * (size_t)iovcnt);
    while (iovcnt > 0) {
        ssize_t n;
        if (w->deadline_us) {
            /* Never block past the deadline: wait for room, then write
             * what fits. */
            if (wait_ready(w, POLLOUT, false) < 0)
                return -1;
            struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)iovcnt };
            n = sendmsg(w->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n < 0 && errno == EAGAIN)
                continue;
        } else {
            n = writev(w->fd, iov, iovcnt);
        }
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

static ssize_t layer_recv(Wire *w, void *buf, size_t len)
{
    return w->layer ? w->layer->recv(w, buf, len) : wire_raw_recv(w, buf, len);
}

/* Refill the buffer; returns bytes read, 0 at end of stream, -1 on error. */
static ssize_t refill(Wire *w)
{
    ssize_t n = layer_recv(w, w->buf, sizeof w->buf);
    w->start = 0;
    w->end = n > 0 ? (size_t)n : 0;
    return n;
}

int wire_read(Wire *w, void *dst, size_t len)
{
    unsigned char *out = dst;
    size_t got = 0;

    while (got < len) {
        size_t avail = w->end - w->start;
        if (avail == 0) {
            ssize_t n;
            /* Large payloads go straight into the destination. */
            if (len - got >= sizeof w->buf) {
                n = layer_recv(w, out + got, len - got);
                if (n > 0) {
                    got += (size_t)n;
                    continue;
                }
            } else {
                n = refill(w);
            }
            if (n < 0)
                return -1;
            if (n == 0) {
                errno = got ? ECONNRESET : 0;
                return -1;
            }
            continue;
        }
        size_t take = avail < len - got ? avail : len - got;
        memcpy(out + got, w->buf + w->start, take);
        w->start += take;
        got += take;
    }
    return 0;
}

int wire_skip(Wire *w, uint64_t len)
{
    while (len > 0) {
        size_t avail = w->end - w->start;
        if (avail == 0) {
            ssize_t n = refill(w);
            if (n < 0)
                return -1;
            if (n == 0) {
                errno = ECONNRESET;
                return -1;
            }
            continue;
        }
        size_t take = avail < len ? avail : (size_t)len;
        w->start += take;
        len -= take;
    }
    return 0;
}

int wire_writev(Wire *w, const struct iovec *iov, int iovcnt)
{
    return w->layer ? w->layer->sendv(w, iov, iovcnt) : wire_raw_sendv(w, iov, iovcnt);
}

int wire_write(Wire *w, const void *buf, size_t len)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    return wire_writev(w, &iov, 1);
}
