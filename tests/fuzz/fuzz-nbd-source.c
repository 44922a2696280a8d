/* libFuzzer harness: the NBD handshake and request parsers in front of a
 * source export (file-export.c, read-only, 256 KiB of a memfd with a hole in
 * the middle, as a RAM file). See nbd-harness.h for the input format. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "file-export.h"
#include "nbd-harness.h"

static void fuzz_setup(Server *s)
{
    int fd = memfd_create("fuzz-source-ram", 0);
    if (fd < 0 || ftruncate(fd, 256 << 10) < 0) {
        perror("fuzz-nbd-source: memfd_create/ftruncate");
        abort();
    }
    unsigned char page[4096];
    for (int p = 0; p < 64; p++) {
        if (p >= 24 && p < 40)
            continue;   /* a hole */
        memset(page, p, sizeof page);
        if (pwrite(fd, page, sizeof page, (off_t)p * 4096) != (ssize_t)sizeof page) {
            perror("fuzz-nbd-source: pwrite");
            abort();
        }
    }
    char spec[64];
    snprintf(spec, sizeof spec, "mem=/proc/self/fd/%d", fd);
    GError *error = NULL;
    Export *e = file_export_new(spec, &error);
    if (!e) {
        fprintf(stderr, "fuzz-nbd-source: %s\n", error->message);
        abort();
    }
    export_set_add(&s->exports, e);
}

static void fuzz_before_input(Server *s, uint8_t flags)
{
    (void)s;
    (void)flags;
}
