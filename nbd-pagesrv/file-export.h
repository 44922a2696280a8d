/* The migration source: a guest RAM image (typically QEMU's share=on RAM
 * file in /dev/shm) served read-only. Holes report as zero via
 * base:allocation so the destination never transfers untouched RAM. */
#ifndef SWAPCOPY_FILE_EXPORT_H
#define SWAPCOPY_FILE_EXPORT_H

#include "export.h"

/* spec is "NAME=FILE". */
Export *file_export_new(const char *spec, GError **error);

#endif
