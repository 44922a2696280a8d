/* The destination role of nbd-pagesrv (--src HOST:PORT): slots of the swap
 * device are mapped to pages of the source's exports; a READ of a slot
 * that is not local yet is a demand fault fetched at once on its own
 * connection, while a background stream pulls every other page. */
#ifndef SWAPCOPY_DEST_H
#define SWAPCOPY_DEST_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "control.h"
#include "page-store.h"
#include "tls-config.h"

typedef struct Dest Dest;

/* Checks that the source answers and lists its exports (exits early with a
 * clear error otherwise); with src_later, a source that does not answer
 * yet is listed at the first map instead. ps and tls (the link's TLS
 * settings) must outlive the Dest. */
Dest *dest_new(PageStore *ps, const char *src, const TlsConfig *tls, bool src_later,
               int64_t fault_timeout_us, GError **error);
void dest_register_commands(Dest *d, ControlServer *cs);
/* Appends "destination" statistics as a JSON object. */
void dest_status_json(Dest *d, GString *out);
/* Stop pulling: readers waiting for pages get ESHUTDOWN at once and new
 * faults fail, so NBD connections can be closed before dest_free(). */
void dest_stop(Dest *d);
void dest_free(Dest *d);

#endif
