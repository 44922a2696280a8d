#ifndef SWAPCOPY_SIZE_ARG_H
#define SWAPCOPY_SIZE_ARG_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

/* "4096", "64K", "512M", "2G", "1T" (powers of 1024; optional trailing
 * "iB"/"B"). False with *error set on anything else or on overflow. */
bool parse_size(const char *what, const char *text, uint64_t *out, GError **error);

#endif
