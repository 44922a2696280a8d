/* The shared driver of the NBD fuzz harnesses (fuzz-nbd-source.c,
 * fuzz-nbd-dest.c): the input is what a client sends; nbd-pagesrv's own
 * handshake.c and transmission.c parse and answer it, on a Connection
 * whose Wire reads the input and throws the replies away (a WireLayer, so
 * no socket and no thread is involved but the server's own workers).
 *
 * Input byte 0 chooses where the stream starts: bit 0 clear, at the
 * greeting (handshake, then transmission); set, in transmission already,
 * with structured replies if bit 1 and base:allocation if bit 2 (so the
 * fuzzer need not rediscover the handshake to reach the request parser).
 * The harness sets up its export in fuzz_setup() (once) and
 * fuzz_before_input() (each input, from byte 0's other bits). */
#ifndef SWAPCOPY_FUZZ_NBD_HARNESS_H
#define SWAPCOPY_FUZZ_NBD_HARNESS_H

#include <glib.h>
#include <sanitizer/asan_interface.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "limits.h"
#include "server.h"

static void fuzz_setup(Server *s);
static void fuzz_before_input(Server *s, uint8_t flags);

typedef struct {
    const uint8_t *data;
    size_t len, off;
} FuzzInput;

static ssize_t fuzz_recv(Wire *w, void *buf, size_t len)
{
    FuzzInput *in = w->layer_data;
    size_t n = MIN(len, in->len - in->off);
    memcpy(buf, in->data + in->off, n);
    in->off += n;
    return (ssize_t)n;   /* 0 at the end: the client went away */
}


static int fuzz_sendv(Wire *w, const struct iovec *iov, int iovcnt)
{
    (void)w;
    /* A reply is never sent: check that every byte of it is memory the
     * server may read (not freed, not past an allocation), as writev
     * would have read it. */
    for (int i = 0; i < iovcnt; i++) {
        void *bad = iov[i].iov_len ? __asan_region_is_poisoned(iov[i].iov_base, iov[i].iov_len) : NULL;
        if (bad) {
            fprintf(stderr, "fuzz: reply piece %d of %d (%zu bytes at %p) reaches memory the "
                    "server may not read, at %p\n", i, iovcnt, iov[i].iov_len, iov[i].iov_base, bad);
            abort();
        }
    }
    return 0;
}

static const WireLayer fuzz_layer = { .recv = fuzz_recv, .sendv = fuzz_sendv };

static Server fuzz_server;

/* Refused requests are logged, as they should be: not while fuzzing, where
 * millions of them would drown the fuzzer's own output. */
static void fuzz_quiet_log(const gchar *domain, GLogLevelFlags level, const gchar *message,
                           gpointer data)
{
    (void)domain; (void)level; (void)message; (void)data;
}

/* libFuzzer: one input = one client connection. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        g_log_set_default_handler(fuzz_quiet_log, NULL);
        server_init(&fuzz_server);
        fuzz_setup(&fuzz_server);
        ready = true;
    }
    if (size == 0)
        return 0;
    uint8_t flags = data[0];
    FuzzInput in = { data + 1, size - 1, 0 };
    fuzz_before_input(&fuzz_server, flags);

    Connection *c = connection_new(&fuzz_server, -1, "fuzz", true);
    wire_set_layer(&c->wire, &fuzz_layer, &in);

    if (flags & 1) {
        c->export = g_ptr_array_index(fuzz_server.exports.exports, 0);
        c->structured = flags & 2;
        c->meta_base_allocation = c->structured && (flags & 4);
        nbd_transmission(c);
    } else if (nbd_handshake(c)) {
        nbd_transmission(c);
    }

    connection_free(c);
    return 0;
}

#endif
