#include "export.h"

#include <string.h>

#include "nbd-proto.h"

static void export_destroy(gpointer p)
{
    Export *e = p;
    if (e->ops->destroy)
        e->ops->destroy(e);
    g_free(e->name);
    g_free(e->identity);
    g_free(e);
}

void export_set_init(ExportSet *set)
{
    set->exports = g_ptr_array_new_with_free_func(export_destroy);
}

void export_set_add(ExportSet *set, Export *e)
{
    g_ptr_array_add(set->exports, e);
}

Export *export_set_find(const ExportSet *set, const char *name, size_t len)
{
    if (set->exports->len == 0)
        return NULL;
    if (len == 0)
        return g_ptr_array_index(set->exports, 0);
    for (guint i = 0; i < set->exports->len; i++) {
        Export *e = g_ptr_array_index(set->exports, i);
        if (strlen(e->name) == len && memcmp(e->name, name, len) == 0)
            return e;
    }
    return NULL;
}

void export_set_clear(ExportSet *set)
{
    if (set->exports)
        g_ptr_array_unref(set->exports);
    set->exports = NULL;
}

uint16_t export_transmission_flags(const Export *e)
{
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA;
    if (e->read_only)
        f |= NBD_FLAG_READ_ONLY;
    else
        f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    if (e->ops->cache)
        f |= NBD_FLAG_SEND_CACHE;
    if (e->multi_conn)
        f |= NBD_FLAG_CAN_MULTI_CONN;
    return f;
}

void extent_append(GArray *extents, uint32_t len, uint32_t flags)
{
    Extent *last = extents->len ? &g_array_index(extents, Extent, extents->len - 1) : NULL;
    if (last && last->flags == flags && last->length <= UINT32_MAX - len)
        last->length += len;
    else
        g_array_append_val(extents, ((Extent){ len, flags }));
}
