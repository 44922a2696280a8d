/* Shared by the pull-* test programs: the files that describe a migration
 * test (the source image's per-page checksum list written by mkimage, and
 * the slot map written by pull-plan), loaded into memory.
 *
 *   checksum list: one line per source page, "PAGE CRC32" (CRC in hex);
 *   map file:      one line per 'map' command, "SLOT PAGE COUNT".
 *
 * Header-only because every test program is built from a single .c file. */
#ifndef SWAPCOPY_PULL_COMMON_H
#define SWAPCOPY_PULL_COMMON_H

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>
#include <zlib.h>

#define PULL_PAGE 4096u
#define PULL_UNMAPPED UINT64_MAX

G_GNUC_NORETURN G_GNUC_PRINTF(1, 2) static inline void pull_die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", g_get_prgname() ? g_get_prgname() : "pull-test");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static inline uint32_t pull_crc(const void *page)
{
    return (uint32_t)crc32(0L, page, PULL_PAGE);
}

static inline uint32_t pull_zero_crc(void)
{
    static const unsigned char zero[PULL_PAGE];
    return pull_crc(zero);
}

static inline uint64_t pull_parse_u64(const char *what, const char *s)
{
    char *end;
    errno = 0;
    if (!s || !g_ascii_isdigit(*s))
        pull_die("%s '%s' is not a non-negative integer", what, s ? s : "(missing)");
    uint64_t v = g_ascii_strtoull(s, &end, 10);
    if (errno || *end)
        pull_die("%s '%s' is not a non-negative integer", what, s);
    return v;
}

/* The checksum list: crcs[page]; *n_pages set to its length. */
static inline uint32_t *pull_load_crcs(const char *path, uint64_t *n_pages)
{
    FILE *f = fopen(path, "r");
    if (!f)
        pull_die("cannot open the checksum list %s: %s (write it with mkimage)", path,
                 strerror(errno));
    GArray *a = g_array_new(FALSE, FALSE, sizeof(uint32_t));
    uint64_t page;
    uint32_t crc;
    int n;
    while ((n = fscanf(f, "%" SCNu64 " %" SCNx32, &page, &crc)) == 2) {
        if (page != a->len)
            pull_die("%s: line %u names page %" PRIu64 ": the list must have one line per "
                     "page, in order", path, a->len + 1, page);
        g_array_append_val(a, crc);
    }
    if (n != EOF || ferror(f))
        pull_die("%s: malformed line %u (expected \"PAGE CRC32HEX\")", path, a->len + 1);
    fclose(f);
    *n_pages = a->len;
    return (uint32_t *)g_array_free(a, FALSE);
}

/* The map file as a slot -> source page table of n_slots entries
 * (PULL_UNMAPPED where no map command covered the slot). Checks that the
 * commands stay inside both the device and the source and do not overlap. */
static inline uint64_t *pull_load_map(const char *path, uint64_t n_slots, uint64_t n_pages)
{
    FILE *f = fopen(path, "r");
    if (!f)
        pull_die("cannot open the map file %s: %s (write it with pull-plan)", path,
                 strerror(errno));
    uint64_t *table = g_new(uint64_t, n_slots ? n_slots : 1);
    for (uint64_t i = 0; i < n_slots; i++)
        table[i] = PULL_UNMAPPED;
    uint64_t slot, page, count;
    unsigned line = 0;
    int n;
    while ((n = fscanf(f, "%" SCNu64 " %" SCNu64 " %" SCNu64, &slot, &page, &count)) == 3) {
        line++;
        if (slot > n_slots || count > n_slots - slot || page > n_pages || count > n_pages - page)
            pull_die("%s:%u: slots %" PRIu64 "+%" PRIu64 " / pages %" PRIu64 " are outside the "
                     "%" PRIu64 " slots or %" PRIu64 " pages", path, line, slot, count, page,
                     n_slots, n_pages);
        for (uint64_t i = 0; i < count; i++) {
            if (table[slot + i] != PULL_UNMAPPED)
                pull_die("%s:%u: slot %" PRIu64 " is mapped twice", path, line, slot + i);
            table[slot + i] = page + i;
        }
    }
    if (n != EOF || ferror(f))
        pull_die("%s: malformed line %u (expected \"SLOT PAGE COUNT\")", path, line + 1);
    fclose(f);
    return table;
}

/* Nearest-rank quantile of a sorted array. */
static inline double pull_quantile(const double *sorted, size_t n, double q)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(q * (double)n);
    if (i >= n)
        i = n - 1;
    return sorted[i];
}

static inline int pull_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#endif
