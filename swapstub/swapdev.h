/* What the kernel says about swap: which device is which swap type, how
 * full swap is, whether zswap would intercept pages, the swap cache size. */
#ifndef SWAPSTUB_SWAPDEV_H
#define SWAPSTUB_SWAPDEV_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct {
    unsigned type;             /* the swap type pagemap reports for it */
    uint64_t size_pages, used_pages;
    int priority;
    bool top;                  /* its priority is above every other active device's */
    uint64_t total_pages, total_used_pages;   /* all devices */
} SwapDevInfo;

/* Finds `device` (a path as /proc/swaps prints it, symlinks resolved).
 * Its type is its position in /proc/swaps, which is right only while no
 * lower type has been swapped off with a higher one still on (with several
 * swapcopy devices coming and going, often not): arming learns the type
 * from pagemap instead, and callers that attach later pass it on. */
bool swapdev_lookup(const char *device, SwapDevInfo *out, GError **error);
/* Refuse if zswap is enabled: pages would stop in compressed RAM and never
 * reach the device. */
bool swapdev_check_zswap(GError **error);
/* SwapCached from /proc/meminfo, in pages; -1 if unreadable. */
int64_t swapdev_swap_cached_pages(void);

#endif
