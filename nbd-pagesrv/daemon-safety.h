/* What a process serving a swap device must do so that it never waits on
 * its own device: stay in RAM, be allowed to do I/O under memory pressure,
 * and not be the OOM killer's first choice. */
#ifndef SWAPCOPY_DAEMON_SAFETY_H
#define SWAPCOPY_DAEMON_SAFETY_H

#include <stdbool.h>

/* Each step that fails is logged with what to do; none is fatal, because
 * tests and sanitizer builds run without some of them. */
void daemon_make_swap_safe(bool lock_memory);

#endif
