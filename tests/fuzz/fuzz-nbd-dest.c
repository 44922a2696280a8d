/* libFuzzer harness: the NBD handshake and request parsers in front of the
 * destination's page store (page-store-export.c), whose remote slots are
 * fetched from a fake source that answers with data, with errors and late
 * (as a source over a slow link). Reads of remote slots go through the
 * server's worker threads, as in production. Each input starts from the
 * same store: 64 slots, the first 48 mapped to the source, the rest empty.
 * See nbd-harness.h for the input format; byte 0 bit 3 turns land mode on. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "nbd-harness.h"
#include "page-store-export.h"

#define SLOTS 64
#define MAPPED 48

static PageStore *store;

/* The fake source: page P holds bytes P; every 8th page fails with EIO,
 * every 16th answers 50 µs late. */
static int fake_fetch(void *opaque, unsigned export_id, uint64_t page, void *dst)
{
    (void)opaque;
    if (export_id != 0 || page >= MAPPED)
        abort();   /* the store asked for a page nobody mapped */
    if (page % 8 == 7)
        return EIO;
    if (page % 16 == 5)
        g_usleep(50);
    memset(dst, (int)page, PAGE_SIZE_BYTES);
    return 0;
}

static void fake_prefetch(void *opaque, const RemotePage *pages, size_t n, bool urgent)
{
    (void)opaque;
    (void)urgent;
    for (size_t i = 0; i < n; i++)
        if (pages[i].export_id != 0 || pages[i].page >= MAPPED)
            abort();
}

static void fuzz_setup(Server *s)
{
    GError *error = NULL;
    /* The spill file goes to $TMPDIR, unlinked; 16 pages of RAM pool so
     * that the spill path is fuzzed too. */
    store = page_store_new(SLOTS * PAGE_SIZE_BYTES, NULL, 16 * PAGE_SIZE_BYTES, false, &error);
    if (!store) {
        fprintf(stderr, "fuzz-nbd-dest: %s\n", error->message);
        abort();
    }
    page_store_set_fetcher(store, fake_fetch, fake_prefetch, 8, NULL);
    export_set_add(&s->exports, page_store_export_new("swap", store, SLOTS * PAGE_SIZE_BYTES));
}

static void fuzz_before_input(Server *s, uint8_t flags)
{
    (void)s;
    page_store_set_landing(store, false);
    page_store_release_landed(store);
    page_store_discard(store, SLOTS * PAGE_SIZE_BYTES, 0);
    if (page_store_map_remote(store, 0, MAPPED, 0, 0) != MAPPED)
        abort();   /* every slot was just emptied */
    page_store_set_landing(store, flags & 8);
}
