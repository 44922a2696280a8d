#include "seconds-arg.h"

#include <errno.h>
#include <math.h>
#include <string.h>

bool parse_seconds(const char *what, const char *text, int64_t *out_us, GError **error)
{
    char *end = NULL;
    /* g_ascii_strtod takes "nan", "inf" and hex floats too: only plain
     * decimal numbers are durations. */
    if (text && (g_ascii_isdigit(*text) || *text == '.')) {
        errno = 0;
        double v = g_ascii_strtod(text, &end);
        if (errno == 0 && end && *end == 0 && isfinite(v) && v >= SECONDS_ARG_MIN &&
            v <= SECONDS_ARG_MAX && !strpbrk(text, "xXpP")) {
            *out_us = (int64_t)(v * 1e6 + 0.5);
            return true;
        }
    }
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "%s: '%s' is not a duration nbd-pagesrv can honour: give seconds between "
                "%.3f and %.0f (e.g. 60 or 0.5)", what, text ? text : "(null)",
                SECONDS_ARG_MIN, SECONDS_ARG_MAX);
    return false;
}
