#include "swapdev.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* /proc/swaps lists active devices in swap-type order, so the n-th line is
 * type n unless a lower type was swapped off while a higher one stayed on;
 * arming double-checks the type against pagemap and /proc/swaps' "Used". */
bool swapdev_lookup(const char *device, SwapDevInfo *out, GError **error)
{
    g_autofree char *want = realpath(device, NULL);
    if (!want) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "swap device %s: %s", device, g_strerror(errno));
        return false;
    }
    FILE *f = fopen("/proc/swaps", "re");
    if (!f) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot read /proc/swaps: %s", g_strerror(errno));
        return false;
    }
    char line[512];
    bool found = false;
    unsigned idx = 0;
    int top_other = INT_MIN;
    memset(out, 0, sizeof *out);
    if (!fgets(line, sizeof line, f))
        line[0] = 0;   /* header */
    while (fgets(line, sizeof line, f)) {
        char name[256], type[32];
        unsigned long long size_kb, used_kb;
        int prio;
        if (sscanf(line, "%255s %31s %llu %llu %d", name, type, &size_kb, &used_kb, &prio) != 5)
            continue;
        out->total_pages += size_kb / 4;
        out->total_used_pages += used_kb / 4;
        g_autofree char *real = realpath(name, NULL);
        if (!found && real && strcmp(real, want) == 0) {
            found = true;
            out->type = idx;
            out->size_pages = size_kb / 4;
            out->used_pages = used_kb / 4;
            out->priority = prio;
        } else {
            top_other = MAX(top_other, prio);
        }
        idx++;
    }
    fclose(f);
    out->top = found && out->priority > top_other;
    if (!found) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_NOENT,
                    "%s is not an active swap device (see /proc/swaps); run "
                    "scripts/setup-swap.sh first", device);
        return false;
    }
    return true;
}

bool swapdev_check_zswap(GError **error)
{
    g_autofree char *v = NULL;
    if (!g_file_get_contents("/sys/module/zswap/parameters/enabled", &v, NULL, NULL))
        return true;   /* no zswap in this kernel */
    if (v[0] == 'Y' || v[0] == 'y' || v[0] == '1') {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                    "zswap is enabled: pages would stay compressed in RAM instead of reaching "
                    "the swapcopy device; disable it with 'echo N > "
                    "/sys/module/zswap/parameters/enabled'");
        return false;
    }
    return true;
}

int64_t swapdev_swap_cached_pages(void)
{
    g_autofree char *m = NULL;
    if (!g_file_get_contents("/proc/meminfo", &m, NULL, NULL))
        return -1;
    const char *p = strstr(m, "\nSwapCached:");
    if (!p)
        return -1;
    return (int64_t)(g_ascii_strtoull(p + strlen("\nSwapCached:"), NULL, 10) / 4);
}
