/* The swap device served as a file over FUSE, by nbd-pagesrv itself.
 *
 * Where the kernel has no nbd driver, the device is a loop device on a
 * FUSE file. nbdfuse can provide that file, as a client of our NBD socket:
 * every page then crosses /dev/fuse into nbdfuse, a socket, and our NBD
 * reader, three copies and two processes per page. Serving the same file
 * from here takes the page straight from /dev/fuse into the export: one
 * copy, no second process on the swap path (docs/nbd-pagesrv.md).
 *
 * MOUNTDIR becomes a directory holding one file, "nbd", of the export's
 * size; reads, writes, flushes and hole punches on it are the export's
 * pread, pwrite, flush and trim, counted in the same statistics as NBD
 * requests. */
#ifndef SWAPCOPY_FUSE_FRONT_H
#define SWAPCOPY_FUSE_FRONT_H

#include <glib.h>

#include "export.h"
#include "server-stats.h"

typedef struct FuseFront FuseFront;

/* Mounts MOUNTDIR (an existing, empty directory) and serves it from
 * threads of this process until fuse_front_free(). */
FuseFront *fuse_front_new(Export *e, ServerStats *stats, const char *mountdir, GError **error);

/* Unmounts (lazily, if a loop device still holds the file: its I/O then
 * fails) and stops the threads. NULL is allowed. */
void fuse_front_free(FuseFront *ff);

#endif
