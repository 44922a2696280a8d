#include "size-arg.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

bool parse_size(const char *what, const char *text, uint64_t *out, GError **error)
{
    char *end = NULL;
    errno = 0;
    if (!text || !g_ascii_isdigit(*text))
        goto bad;
    uint64_t v = g_ascii_strtoull(text, &end, 10);
    if (errno)
        goto bad;
    unsigned shift = 0;
    switch (g_ascii_toupper(*end)) {
    case 0: break;
    case 'K': shift = 10; end++; break;
    case 'M': shift = 20; end++; break;
    case 'G': shift = 30; end++; break;
    case 'T': shift = 40; end++; break;
    default: goto bad;
    }
    if (shift && (strcmp(end, "iB") == 0 || strcmp(end, "B") == 0))
        end += strlen(end);
    if (*end || (shift && v > (UINT64_MAX >> shift)))
        goto bad;
    *out = v << shift;
    return true;
bad:
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "%s: '%s' is not a size (examples: 4096, 64K, 512M, 2G)", what,
                text ? text : "(null)");
    return false;
}
