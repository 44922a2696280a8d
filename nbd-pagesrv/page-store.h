/* The page store behind the destination's swap device: one slot per 4 KiB
 * page of the device. A slot is
 *   EMPTY   never written, or trimmed: reads as zeros;
 *   RAM     held in a page of the RAM pool (bounded by mem_limit);
 *   FILE    held at the slot's own offset in a sparse spill file;
 *   REMOTE  page P of source export E, not fetched yet (dest.c fills
 *           these in; page_store_read() hands them to the fetcher);
 *   MARKER  swapstub's arming marker for region page I (nothing stored:
 *           the content is regenerated, flagged as read from the device);
 *   LANDED  page P of source export E, handed to the kernel once in landing
 *           mode and not kept: the kernel holds it now (swap cache or mapped).
 *           Should the kernel drop its clean copy and read the slot again,
 *           it is fetched from the source again.
 * Requests may be unaligned; whole-page writes of zeros become EMPTY. */
#ifndef SWAPCOPY_PAGE_STORE_H
#define SWAPCOPY_PAGE_STORE_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#define PAGE_SIZE_BYTES 4096u
#define PAGE_SHIFT_BITS 12

typedef enum {
    SLOT_EMPTY = 0,
    SLOT_RAM = 1,
    SLOT_FILE = 2,
    SLOT_REMOTE = 3,
    SLOT_MARKER = 4,
    SLOT_LANDED = 5,
} SlotKind;

/* Slots whose content only the source has. */
static inline bool slot_kind_on_source(SlotKind k)
{
    return k == SLOT_REMOTE || k == SLOT_LANDED;
}

typedef struct PageStore PageStore;

/* Fetches remote page `page` of source export `export_id` into dst (4 KiB).
 * Called without any store lock held; may block. Returns 0 or an errno. */
typedef int (*PageFetchFn)(void *opaque, unsigned export_id, uint64_t page, void *dst);
/* A page of a source export. */
typedef struct {
    unsigned export_id;
    uint64_t page;
} RemotePage;
/* Asks for remote pages that will probably be read soon, all at once (so
 * that consecutive ones can travel in one source read); never blocks.
 * urgent: a small read, likely a fault the process waits on, which goes
 * ahead of the big batches of a kernel pulling the region in. */
typedef void (*PagePrefetchFn)(void *opaque, const RemotePage *pages, size_t n, bool urgent);

typedef struct {
    uint64_t slots;
    uint64_t ram_pages;
    uint64_t file_pages;
    uint64_t remote_pages;       /* mapped to the source, not yet local */
    uint64_t landed_pages;       /* handed to the kernel, not kept (landing mode) */
    uint64_t marker_pages;       /* armed, not mapped yet */
    uint64_t marker_reads;       /* reads of marker slots ever served: a region armed for
                                  * later mapping is still out of the swap cache while
                                  * this count has not moved */
    uint64_t pool_pages;         /* RAM pool mapped so far (used or not) */
    bool prealloc_done;          /* --mem-prealloc finished (or not asked for) */
} PageStoreCounts;

/* spill_path NULL: an unlinked temporary file in $TMPDIR. prealloc: map
 * and touch the whole RAM pool (mem_limit) in a background thread now,
 * rather than page by page as data arrives. */
PageStore *page_store_new(uint64_t size, const char *spill_path, uint64_t mem_limit,
                          bool prealloc, GError **error);
void page_store_free(PageStore *ps);

int page_store_read(PageStore *ps, void *buf, uint32_t len, uint64_t off);
int page_store_write(PageStore *ps, const void *buf, uint32_t len, uint64_t off);
/* TRIM and WRITE_ZEROES: the range reads as zeros afterwards; whole pages
 * give their memory back. */
int page_store_discard(PageStore *ps, uint32_t len, uint64_t off);
/* Append Extent items describing [off, off+len). */
void page_store_extents(PageStore *ps, uint32_t len, uint64_t off, GArray *extents);
void page_store_counts(PageStore *ps, PageStoreCounts *out);

/* Marker pages are recognised only while an arm is in progress, and only
 * with that arm's 64-bit cookie: a guest page that merely looks like a
 * marker is stored as data. */
void page_store_expect_markers(PageStore *ps, bool on, uint64_t cookie);

/* For the migration destination. */
/* When a read finds a remote slot, the remote slots of the aligned
 * `cluster`-slot window around the read are prefetched first: the kernel's
 * swap readahead is about to ask for them. */
void page_store_set_fetcher(PageStore *ps, PageFetchFn fetch, PagePrefetchFn prefetch,
                            unsigned cluster, void *opaque);
/* Map slots [slot, slot+n) -> remote pages [page, page+n) of export_id,
 * replacing what each slot held: the marker page written while the region
 * was armed, nothing, or an earlier mapping. A slot holding data (a page
 * the kernel swapped out to it: on this top-priority device, maybe another
 * process's) is left alone, and so is the rest of its batch. A later write
 * to a slot makes it local again. Returns how many slots were mapped, from
 * the first: n unless a slot held data. Costs one pass over the run with
 * every slot lock taken once per batch of MAP_BATCH_SLOTS, not a lock per
 * page. */
uint64_t page_store_map_remote(PageStore *ps, uint64_t slot, uint64_t n, unsigned export_id,
                               uint64_t page);
SlotKind page_store_slot_kind(PageStore *ps, uint64_t slot);
/* Landing mode: a read of a remote slot hands the fetched page to the
 * reader (the kernel, swapping it in) without storing it, and the slot
 * becomes LANDED. Off: the page is stored, as for any other reader. */
void page_store_set_landing(PageStore *ps, bool on);
bool page_store_landing(PageStore *ps);
/* The kernel will never read a landed slot again (the process wrote every
 * page it holds, or the device is going away): they become EMPTY.
 * Returns how many there were. */
uint64_t page_store_release_landed(PageStore *ps);
/* One letter per slot of [first, first+n): E(mpty) L(ocal) R(emote) M(arker)
 * D (landed: delivered to the kernel, not kept). */
void page_store_slot_letters(PageStore *ps, uint64_t first, uint64_t n, char *out);
/* Install fetched data for a slot that is still REMOTE for (export_id,
 * page); does nothing if the slot has changed meanwhile. Returns true if
 * installed. */
bool page_store_fill_remote(PageStore *ps, uint64_t slot, unsigned export_id, uint64_t page,
                            const void *data);

#endif
