#ifndef SWAPSTUB_INTERNAL_H
#define SWAPSTUB_INTERNAL_H

#include <limits.h>
#include <sched.h>

#include "swapdev.h"
#include "swapstub.h"
#include "target.h"

#define SS_PAGE 4096u
/* Where a kernel with mm-patch-madvise announces MADV_SWAPSTUB (and the
 * advice number). */
#define SWAPSTUB_SYSFS "/sys/kernel/mm/swap/swapstub"

#define SS_TYPE_UNSET UINT_MAX

/* The arming thread pinned to one CPU (swap-alloc-prime.c). */
typedef struct {
    cpu_set_t saved;               /* its affinity before */
    bool pinned;
} SwapStubPin;

struct SwapStub {
    Target t;
    uint64_t addr, pages;
    char *control, *device, *export_name;
    uint64_t export_page;
    unsigned type;                 /* swap type of the device; SS_TYPE_UNSET: the first
                                    * page swapped out while arming tells it */
    bool type_known;               /* type is known (given, or learnt from pagemap) */
    SwapStubPin pin;
    uint64_t *slot;                /* swap offset of each page at arm time */
    bool *converted;               /* page already back to plain memory */
    bool mapped;                   /* its slots are registered with nbd-pagesrv */
    bool global_check;             /* another process whose mincore cannot be had:
                                      eviction checked by the system's SwapCached */
    uint64_t marker_reads;         /* nbd-pagesrv's marker_reads when arming ended */
};

/* A number from one of nbd-pagesrv's JSON answers: the first "key":N. */
bool json_u64(const char *json, const char *key, uint64_t *out);

SwapStub *swapstub_new(const SwapStubConfig *cfg, GError **error);

/* arm.c, shared by both arming methods: register each run of consecutive
 * slots with nbd-pagesrv ('map'); check every page is still on its slot. */
bool swapstub_register_mapping(SwapStub *s, SwapStubArmReport *r, GError **error);
/* nbd-pagesrv's count of reads of marker slots ("stats" marker_reads). */
bool swapstub_daemon_marker_reads(SwapStub *s, uint64_t *out, GError **error);
bool swapstub_verify_slots(SwapStub *s, GError **error);

/* swap-alloc-prime.c: pin the calling thread to its CPU and make that
 * CPU's next swap slots (orders 0 and 9) come from the highest-priority
 * device, whose swap type it returns; -1 with *error (then not pinned). */
int swapstub_prime_swap_alloc(SwapStubPin *pin, GError **error);
/* Only the pinning part of it: the arming thread stays on this CPU. */
bool swapstub_pin_here(SwapStubPin *pin, GError **error);
void swapstub_unpin(SwapStubPin *pin);

/* arm-madvise.c. Which method arms s: 1 MADV_SWAPSTUB (*advice set), 0 the
 * stock-kernel recipe, -1 error. SWAPSTUB_ARM_METHOD (auto, stock,
 * madv_swapstub) overrides the choice. */
int swapstub_madvise_choose(const SwapStub *s, int *advice, GError **error);
/* Arm with MADV_SWAPSTUB: no markers, no I/O. On failure the region is
 * plain memory again (zeros). */
bool swapstub_arm_madvise(SwapStub *s, int advice, bool map_later, SwapStubArmReport *r,
                          GError **error);

#endif
