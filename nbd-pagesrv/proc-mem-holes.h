/* Which pages of a /proc/PID/mem window read as zeros without a read
 * (never-touched private anonymous memory), for NBD_CMD_BLOCK_STATUS. */
#ifndef SWAPCOPY_PROC_MEM_HOLES_H
#define SWAPCOPY_PROC_MEM_HOLES_H

#include <glib.h>
#include <stdint.h>

typedef struct ProcMemHoles ProcMemHoles;

/* NULL unless mem_path is /proc/PID/mem (base page-aligned) and that
 * process's pagemap can be read; the caller then reports everything as
 * data. */
ProcMemHoles *proc_mem_holes_open(const char *mem_path, uint64_t base);
void proc_mem_holes_close(ProcMemHoles *h);
/* Appends Extent items for [off, off+len) of the window. Returns 0. */
int proc_mem_holes_extents(ProcMemHoles *h, uint32_t len, uint64_t off, GArray *ext);

#endif
