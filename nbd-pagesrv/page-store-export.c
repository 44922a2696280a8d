#include "page-store-export.h"

static PageStore *store(Export *e) { return e->impl; }

static int pse_pread(Export *e, void *buf, uint32_t len, uint64_t off)
{
    return page_store_read(store(e), buf, len, off);
}

static int pse_pwrite(Export *e, const void *buf, uint32_t len, uint64_t off)
{
    return page_store_write(store(e), buf, len, off);
}

static int pse_discard(Export *e, uint32_t len, uint64_t off)
{
    return page_store_discard(store(e), len, off);
}

/* Nothing is cached between the wire and the store, and the store does not
 * outlive the process, so there is nothing to make durable. */
static int pse_flush(Export *e)
{
    (void)e;
    return 0;
}

/* Pull every remote page of the range into the store now, so the reads
 * that follow are local. */
static int pse_cache(Export *e, uint32_t len, uint64_t off)
{
    PageStore *ps = store(e);
    unsigned char page[PAGE_SIZE_BYTES];
    uint64_t first = off >> PAGE_SHIFT_BITS, last = (off + len - 1) >> PAGE_SHIFT_BITS;
    for (uint64_t s = first; s <= last; s++) {
        if (page_store_slot_kind(ps, s) != SLOT_REMOTE)
            continue;
        int err = page_store_read(ps, page, PAGE_SIZE_BYTES, s << PAGE_SHIFT_BITS);
        if (err)
            return err;
    }
    return 0;
}

static int pse_block_status(Export *e, uint32_t len, uint64_t off, GArray *extents)
{
    page_store_extents(store(e), len, off, extents);
    return 0;
}

static bool pse_read_may_block(Export *e, uint32_t len, uint64_t off)
{
    PageStore *ps = store(e);
    PageStoreCounts c;
    page_store_counts(ps, &c);
    if (c.remote_pages == 0 && c.landed_pages == 0)
        return false;
    for (uint64_t s = off >> PAGE_SHIFT_BITS; s <= (off + len - 1) >> PAGE_SHIFT_BITS; s++)
        if (slot_kind_on_source(page_store_slot_kind(ps, s)))
            return true;
    return false;
}

static void pse_stats_json(Export *e, GString *out)
{
    PageStoreCounts c;
    page_store_counts(store(e), &c);
    g_string_append_printf(out,
        "{\"slots\":%" G_GUINT64_FORMAT ",\"local\":%" G_GUINT64_FORMAT
        ",\"ram_pages\":%" G_GUINT64_FORMAT ",\"file_pages\":%" G_GUINT64_FORMAT
        ",\"remote_pages\":%" G_GUINT64_FORMAT ",\"landed_pages\":%" G_GUINT64_FORMAT
        ",\"marker_pages\":%" G_GUINT64_FORMAT ",\"marker_reads\":%" G_GUINT64_FORMAT
        ",\"pool_pages\":%" G_GUINT64_FORMAT ",\"prealloc_done\":%s}",
        c.slots, c.ram_pages + c.file_pages, c.ram_pages, c.file_pages, c.remote_pages,
        c.landed_pages, c.marker_pages, c.marker_reads, c.pool_pages,
        c.prealloc_done ? "true" : "false");
}

static void pse_destroy(Export *e)
{
    page_store_free(store(e));
}

static const ExportOps page_store_ops = {
    .pread = pse_pread,
    .pwrite = pse_pwrite,
    .trim = pse_discard,
    .zero = pse_discard,
    .flush = pse_flush,
    .cache = pse_cache,
    .block_status = pse_block_status,
    .read_may_block = pse_read_may_block,
    .stats_json = pse_stats_json,
    .destroy = pse_destroy,
};

Export *page_store_export_new(const char *name, PageStore *ps, uint64_t size)
{
    Export *e = g_new0(Export, 1);
    e->name = g_strdup(name);
    e->size = size;
    e->read_only = false;
    e->multi_conn = true;   /* one store, no per-connection cache */
    e->ops = &page_store_ops;
    e->impl = ps;
    return e;
}

PageStore *page_store_export_store(Export *e)
{
    return store(e);
}
