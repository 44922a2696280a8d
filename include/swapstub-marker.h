/* The marker pages swapstub writes into a region before paging it out,
 * shared by swapstub (which writes and reads them) and nbd-pagesrv (which
 * recognises them, so arming costs the device no storage, and answers a
 * READ of a marker slot with the same marker flagged as read from the
 * device, so a read-back tells a page still in the swap cache from one
 * the device served).
 *
 * Layout (little-endian u64 words): magic, cookie, page index, origin;
 * every other byte zero. Never all-zero, so the kernel always writes it.
 * The cookie is random per arm, and nbd-pagesrv takes a page for a marker
 * only while told to expect that cookie ('markers COOKIE'), so a guest
 * page that merely looks like a marker is kept as data. */
#ifndef SWAPCOPY_SWAPSTUB_MARKER_H
#define SWAPCOPY_SWAPSTUB_MARKER_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define SWAPSTUB_MARKER_MAGIC   UINT64_C(0x6275747370617773)   /* "swapstub" */
#define SWAPSTUB_ORIGIN_WRITTEN UINT64_C(0x1)                  /* by swapstub arm */
#define SWAPSTUB_ORIGIN_DEVICE  UINT64_C(0x2)                  /* by nbd-pagesrv */
#define SWAPSTUB_MARKER_INDEX_BITS 44
#define SWAPSTUB_PAGE 4096u

/* The header: the four words, all of a marker that is not zeros. */
#define SWAPSTUB_MARKER_HEAD (4 * sizeof(uint64_t))

/* The header alone into head: the whole marker where the rest of the page
 * is zeros already (a page never touched). */
static inline void swapstub_marker_head(void *head, uint64_t cookie, uint64_t index,
                                        uint64_t origin)
{
    uint64_t w[4] = { SWAPSTUB_MARKER_MAGIC, cookie, index, origin };
    memcpy(head, w, sizeof w);
}

static inline void swapstub_marker_fill(void *page, uint64_t cookie, uint64_t index,
                                        uint64_t origin)
{
    memset(page, 0, SWAPSTUB_PAGE);
    swapstub_marker_head(page, cookie, index, origin);
}

/* True if page is a marker; sets the fields. Checks every byte. */
static inline bool swapstub_marker_parse(const void *page, uint64_t *cookie, uint64_t *index,
                                         uint64_t *origin)
{
    uint64_t w[SWAPSTUB_MARKER_HEAD / sizeof(uint64_t)];
    memcpy(w, page, sizeof w);
    if (w[0] != SWAPSTUB_MARKER_MAGIC)
        return false;
    /* Word by word with no early exit: the compiler vectorises it, and
     * nbd-pagesrv parses every page of an arming (a byte loop cost it
     * ~1 us per page, a third of the page-out time). */
    const unsigned char *p = (const unsigned char *)page;
    uint64_t any = 0;
    for (unsigned i = sizeof w; i < SWAPSTUB_PAGE; i += sizeof any) {
        uint64_t x;
        memcpy(&x, p + i, sizeof x);
        any |= x;
    }
    if (any)
        return false;
    *cookie = w[1];
    *index = w[2];
    *origin = w[3];
    return true;
}

#endif
