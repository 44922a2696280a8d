/* marker-check: nbd-pagesrv takes a page for swapstub's arming marker only
 * with the cookie it was told to expect.
 *
 *   marker-check SOCKET COOKIE_HEX SLOT OUTCOME
 *
 * Writes a marker page (cookie COOKIE, page index 5, written by swapstub)
 * to SLOT through NBD and reads it back. OUTCOME "data": it must come back
 * unchanged (stored as a guest page). OUTCOME "marker": it must come back
 * as the same marker flagged as read from the device. Exit 0 if so. */
#include <inttypes.h>
#include <libnbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "swapstub-marker.h"

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: marker-check SOCKET COOKIE_HEX SLOT data|marker\n");
        return 2;
    }
    uint64_t cookie = strtoull(argv[2], NULL, 16), slot = strtoull(argv[3], NULL, 10);
    unsigned char page[SWAPSTUB_PAGE], back[SWAPSTUB_PAGE], want[SWAPSTUB_PAGE];
    swapstub_marker_fill(page, cookie, 5, SWAPSTUB_ORIGIN_WRITTEN);
    struct nbd_handle *h = nbd_create();
    if (!h || nbd_connect_unix(h, argv[1]) < 0 ||
        nbd_pwrite(h, page, sizeof page, slot * SWAPSTUB_PAGE, 0) < 0 ||
        nbd_pread(h, back, sizeof back, slot * SWAPSTUB_PAGE, 0) < 0) {
        fprintf(stderr, "marker-check: %s\n", nbd_get_error());
        return 2;
    }
    nbd_close(h);
    if (strcmp(argv[4], "data") == 0)
        memcpy(want, page, sizeof want);
    else
        swapstub_marker_fill(want, cookie, 5, SWAPSTUB_ORIGIN_DEVICE);
    if (memcmp(back, want, sizeof want) != 0) {
        uint64_t c, i, o;
        bool is = swapstub_marker_parse(back, &c, &i, &o);
        fprintf(stderr, "marker-check: slot %" PRIu64 " read back wrong (%s, origin %" PRIu64
                "), expected %s\n", slot, is ? "a marker" : "not a marker", is ? o : 0, argv[4]);
        return 1;
    }
    printf("slot %" PRIu64 ": %s as expected\n", slot, argv[4]);
    return 0;
}
