/* libswapstub: set a private anonymous memory region up as if it had been
 * swapped out to swapcopy's swap device (nbd-pagesrv), so that the
 * kernel's own swap-in pulls each page from the migration source on first
 * touch; and convert it back to plain anonymous memory afterwards.
 *
 * The one public header. All functions report failure through GError with
 * a message that names what failed, on what, and what to do. */
#ifndef SWAPSTUB_H
#define SWAPSTUB_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct SwapStub SwapStub;

typedef struct {
    pid_t pid;                 /* process owning the region; 0 = this process */
    uint64_t addr;             /* page-aligned start of a private anonymous range */
    uint64_t len;              /* bytes, multiple of 4096 */
    const char *control;       /* nbd-pagesrv's control socket */
    const char *device;        /* the swap device it serves (as /proc/swaps names it) */
    const char *export_name;   /* source export holding the region's content */
    uint64_t export_page;      /* export page that holds the region's first page */
    unsigned evict_seconds;    /* time allowed to empty the swap cache; 0 = 30 */
    bool swap_type_known;      /* swap_type is the device's type, as an arm reported it
                                  (SwapStubArmReport.swap_type); else it is looked up */
    unsigned swap_type;
    bool map_later;            /* arm only: register the slots with swapstub_map() later,
                                * once the source's export exists */
} SwapStubConfig;

typedef struct {
    uint64_t pages;
    uint64_t map_runs;             /* map commands sent (runs of consecutive slots) */
    unsigned rounds;               /* eviction rounds needed */
    uint64_t still_cached_first;   /* pages still in the swap cache after the first pageout */
    const char *method;            /* "stock" or "madv_swapstub" */
    unsigned swap_type;            /* the device's swap type: pass it on to attach later */
    double seconds;
    /* Where the time went (stock method; madv_swapstub fills map_s):
     * marker writes, page-out until every marker reached the device and
     * every slot is known, eviction of the swap cache, registration. */
    double markers_s, pageout_s, evict_s, map_s;
    uint64_t marker_reads;         /* nbd-pagesrv's marker_reads when arming ended: what
                                    * swapstub_attach_armed() needs to map it later */
    /* Exhausting a swap cluster the kernel cached for this CPU on another
     * device (swap-alloc-prime.c); 0 when this is the only swap device. */
    double prime_s;
} SwapStubArmReport;

/* Progress of a long operation: pages done of total, rate, time left. */
typedef void (*SwapStubProgress)(void *opaque, uint64_t done, uint64_t total, double mib_s,
                                 double eta_s);

/* Arm: markers, pageout, check every page went to cfg->device, evict the
 * swap cache, register the slot <-> page mapping with nbd-pagesrv, verify.
 * On failure the region is left as plain memory whose every page reads as
 * a recognisable marker (never source data that could be mistaken for the
 * guest's); the caller must not run the workload on it. */
SwapStub *swapstub_arm(const SwapStubConfig *cfg, SwapStubArmReport *report, GError **error);

/* Register a region armed with map_later with nbd-pagesrv, now that the
 * source's export is there: check that every page is still on its slot and
 * that nothing read a marker slot since arming ended (nothing of the
 * region can be in the swap cache then, whatever other processes do), map,
 * check again. Takes milliseconds. On failure the region is disarmed
 * (zeros) and must be armed again. */
bool swapstub_map(SwapStub *s, SwapStubArmReport *report, GError **error);

/* Take hold of a region another process armed with map_later, for
 * swapstub_map(): every page must still be on the device. marker_reads
 * is that arming's report. */
SwapStub *swapstub_attach_armed(const SwapStubConfig *cfg, uint64_t marker_reads,
                                GError **error);

/* Undo an arm that will not be used (or failed): every page of the region
 * becomes zero, plain memory again. Another process's pages are written
 * over, which reads each back first: from nbd-pagesrv's markers if the
 * region was never mapped, from the source if it was. */
void swapstub_disarm(SwapStub *s);

/* Take hold of a region armed earlier (by another swapstub invocation):
 * reads the slots from pagemap. Pages not on the device count as
 * converted. */
SwapStub *swapstub_attach(const SwapStubConfig *cfg, GError **error);

/* Convert pages whose content is already local in nbd-pagesrv back to
 * plain memory (at most max_pages; 0 = no limit). Returns the number
 * converted, or -1 with *error set. Safe while the workload runs. */
int64_t swapstub_convert_local(SwapStub *s, uint64_t max_pages, GError **error);

/* Finish: optionally wait until nbd-pagesrv has every page, then swap
 * every page in (MADV_POPULATE_WRITE for this process, read faults for
 * another, whose slots `swapoff` then releases) and verify that no page
 * of the region still refers to the device. */
bool swapstub_finish(SwapStub *s, bool wait_all_local, SwapStubProgress progress,
                     void *opaque, GError **error);

/* Pages of the region still swapped out to the device (from pagemap). */
int64_t swapstub_pages_on_device(SwapStub *s, GError **error);
uint64_t swapstub_pages(const SwapStub *s);
void swapstub_free(SwapStub *s);

/* Empty every CPU's batch of pages not yet (back) on the LRU lists, so
 * that the next MADV_PAGEOUT can reach every page (lru-drain.c says why
 * arming needs it). Anything that pages a region out and expects all of it
 * gone needs the same. */
bool swapstub_drain_lru_batches(GError **error);

/* True if the running kernel offers MADV_SWAPSTUB (mm-patch-madvise). */
bool swapstub_kernel_has_madv_swapstub(void);

/* Send one line to an nbd-pagesrv control socket; returns its JSON answer
 * (NULL with *error set on failure or {"error":...}). */
char *swapstub_control(const char *control, const char *line, GError **error);

/* Send n lines on one connection, several in flight at once; false with
 * *error set (naming the line) at the first that fails. For many small
 * requests, such as one 'map' per run of slots. */
bool swapstub_control_lines(const char *control, char *const *lines, size_t n,
                            GError **error);

#endif
