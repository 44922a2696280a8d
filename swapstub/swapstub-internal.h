#ifndef SWAPSTUB_INTERNAL_H
#define SWAPSTUB_INTERNAL_H

#include "swapdev.h"
#include "swapstub.h"
#include "target.h"

#define SS_PAGE 4096u

struct SwapStub {
    Target t;
    uint64_t addr, pages;
    char *control, *device, *export_name;
    uint64_t export_page;
    unsigned type;                 /* swap type of the device */
    uint64_t *slot;                /* swap offset of each page at arm time */
    bool *converted;               /* page already back to plain memory */
};

/* A number from one of nbd-pagesrv's JSON answers: the first "key":N. */
bool json_u64(const char *json, const char *key, uint64_t *out);

SwapStub *swapstub_new(const SwapStubConfig *cfg, GError **error);

#endif
