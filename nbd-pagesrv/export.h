/* An NBD export as the protocol layer sees it: a name, a size and a table
 * of operations. The destination swap device (page-store-export.c) and the
 * source's read-only RAM image (file-export.c) are the two implementations;
 * handshake.c and transmission.c know nothing else about them.
 *
 * Every operation returns 0 or a positive host errno; transmission.c maps
 * errnos to NBD error codes. The protocol layer has already checked that
 * [off, off + len) lies inside the export and that len > 0. */
#ifndef SWAPCOPY_EXPORT_H
#define SWAPCOPY_EXPORT_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct Export Export;

typedef struct {
    uint32_t length;
    uint32_t flags;            /* NBD_STATE_HOLE | NBD_STATE_ZERO */
} Extent;

/* Append [len bytes, flags] to a block-status answer, merged into the last
 * extent when the flags match (and the length still fits). */
void extent_append(GArray *extents, uint32_t len, uint32_t flags);

typedef struct {
    int (*pread)(Export *e, void *buf, uint32_t len, uint64_t off);
    int (*pwrite)(Export *e, const void *buf, uint32_t len, uint64_t off);
    int (*trim)(Export *e, uint32_t len, uint64_t off);
    int (*zero)(Export *e, uint32_t len, uint64_t off);
    int (*flush)(Export *e);
    /* NBD_CMD_CACHE: make the range cheap to read soon. May be NULL. */
    int (*cache)(Export *e, uint32_t len, uint64_t off);
    /* Append extents (GArray of Extent) covering at least the start of
     * [off, off + len) and at most the whole range. */
    int (*block_status)(Export *e, uint32_t len, uint64_t off, GArray *extents);
    /* True when a READ of the range may wait for something slower than
     * memory (a page still on the migration source), so the caller should
     * not serve it on the connection's reader thread. May be NULL. */
    bool (*read_may_block)(Export *e, uint32_t len, uint64_t off);
    /* Append this export's own statistics as a JSON object. */
    void (*stats_json)(Export *e, GString *out);
    void (*destroy)(Export *e);
} ExportOps;

struct Export {
    char *name;
    uint64_t size;
    bool read_only;
    /* Safe for a client to spread requests over several connections: every
     * connection sees the same data and FLUSH on one covers all. */
    bool multi_conn;
    /* Source exports: what this RAM is (the file, or the process whose
     * memory it is), sent as the export's description so that a
     * destination reconnecting can tell a restarted source with the same
     * RAM from one with other RAM. NULL for the swap device. */
    char *identity;
    const ExportOps *ops;
    void *impl;
};

/* The exports one server offers; looked up by name, "" meaning the first. */
typedef struct {
    GPtrArray *exports;        /* of Export*, owned */
} ExportSet;

void export_set_init(ExportSet *set);
void export_set_add(ExportSet *set, Export *e);
Export *export_set_find(const ExportSet *set, const char *name, size_t len);
void export_set_clear(ExportSet *set);

/* Transmission flags the handshake advertises for e. */
uint16_t export_transmission_flags(const Export *e);

#endif
