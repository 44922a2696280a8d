#include <string.h>

#include "swapstub-internal.h"

/* nbd-pagesrv's answers are flat enough that "key": is unambiguous for the
 * keys swapstub reads; a JSON library would be the cure if that changed. */
bool json_u64(const char *json, const char *key, uint64_t *out)
{
    g_autofree char *pat = g_strdup_printf("\"%s\":", key);
    const char *p = json ? strstr(json, pat) : NULL;
    if (!p)
        return false;
    p += strlen(pat);
    if (!g_ascii_isdigit(*p))
        return false;
    *out = g_ascii_strtoull(p, NULL, 10);
    return true;
}
