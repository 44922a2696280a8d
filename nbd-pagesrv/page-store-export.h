/* The destination's swap device as an NBD export backed by a PageStore. */
#ifndef SWAPCOPY_PAGE_STORE_EXPORT_H
#define SWAPCOPY_PAGE_STORE_EXPORT_H

#include "export.h"
#include "page-store.h"

/* Takes ownership of ps. */
Export *page_store_export_new(const char *name, PageStore *ps, uint64_t size);
PageStore *page_store_export_store(Export *e);

#endif
