/* Durations a user gives in seconds (--fault-timeout, policy commands). */
#ifndef SWAPCOPY_SECONDS_ARG_H
#define SWAPCOPY_SECONDS_ARG_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

/* The longest duration nbd-pagesrv can honour: timeouts end up as int
 * milliseconds (poll(2), libnbd), i.e. about 24.8 days. */
#define SECONDS_ARG_MAX (G_MAXINT / 1000.0)
/* The shortest: below a millisecond the wait rounds to nothing. */
#define SECONDS_ARG_MIN 0.001

/* "60", "0.5", "1e3": a finite number of seconds in [SECONDS_ARG_MIN,
 * SECONDS_ARG_MAX], into microseconds. False with *error set naming what
 * and the accepted range on anything else (NaN, inf, negative, 0, too
 * small, too large, trailing text). */
bool parse_seconds(const char *what, const char *text, int64_t *out_us, GError **error);

#endif
