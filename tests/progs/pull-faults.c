/* pull-faults: demand faults as a guest causes them: 4 KiB reads of
 * random mapped slots, one at a time (queue depth 1), each timed and
 * checked against the source page the map gives the slot.
 *
 *   pull-faults --uri NBD_URI [--count N] [--seed N] [--min-page P]
 *               [--slot SLOT]... [--latencies FILE] MAPFILE CRCFILE SLOTS
 *
 * --min-page picks only slots holding source pages >= P: the background
 * stream pulls in page order, so those are still remote early on. --slot
 * reads exactly these slots instead. --latencies appends every successful
 * read's latency (microseconds, one a line) to FILE, for merging runs.
 * Prints one JSON line:
 *   {"reads":N,"ok":N,"wrong":N,"errors":N,"first_errno":"EIO",
 *    "p50_us":..,"p99_us":..,"max_us":..,"seconds":..}
 * (latencies of the successful reads). Exit status: 0 every read right,
 * 1 some read returned wrong data, 3 some reads failed (and none was
 * wrong), 2 could not start. */
#include <libnbd.h>

#include "pull-common.h"

int main(int argc, char **argv)
{
    char *uri = NULL, *lat_path = NULL;
    char **slot_args = NULL;
    gint count = 100;
    gint64 seed = 1, min_page = 0;
    GOptionEntry entries[] = {
        { "uri", 0, 0, G_OPTION_ARG_STRING, &uri, "The destination's NBD URI", "URI" },
        { "count", 0, 0, G_OPTION_ARG_INT, &count, "Random slots to read (default 100)", "N" },
        { "seed", 0, 0, G_OPTION_ARG_INT64, &seed, "Seed of the slot choice", "N" },
        { "min-page", 0, 0, G_OPTION_ARG_INT64, &min_page,
          "Only slots holding source pages >= P", "P" },
        { "slot", 0, 0, G_OPTION_ARG_STRING_ARRAY, &slot_args, "Read this slot", "SLOT" },
        { "latencies", 0, 0, G_OPTION_ARG_FILENAME, &lat_path,
          "Append each read's latency in us to FILE", "FILE" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_set_prgname("pull-faults");
    g_autoptr(GError) error = NULL;
    g_autoptr(GOptionContext) ctx =
        g_option_context_new("MAPFILE CRCFILE SLOTS - timed 4 KiB reads of random mapped slots");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &error))
        pull_die("%s (see --help)", error->message);
    if (argc != 4 || !uri || count <= 0 || min_page < 0)
        pull_die("usage: pull-faults --uri URI [--count N>0] [--seed N] [--min-page P] "
                 "[--slot SLOT]... MAPFILE CRCFILE SLOTS");
    uint64_t slots = pull_parse_u64("SLOTS", argv[3]), pages;
    uint32_t *crcs = pull_load_crcs(argv[2], &pages);
    uint64_t *table = pull_load_map(argv[1], slots, pages);

    /* The slots to read. */
    g_autoptr(GArray) pick = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    if (slot_args) {
        for (char **s = slot_args; *s; s++) {
            uint64_t v = pull_parse_u64("--slot", *s);
            if (v >= slots || table[v] == PULL_UNMAPPED)
                pull_die("--slot %" PRIu64 " is not a mapped slot", v);
            g_array_append_val(pick, v);
        }
    } else {
        g_autoptr(GArray) pool = g_array_new(FALSE, FALSE, sizeof(uint64_t));
        for (uint64_t s = 0; s < slots; s++)
            if (table[s] != PULL_UNMAPPED && table[s] >= (uint64_t)min_page)
                g_array_append_val(pool, s);
        if (pool->len < (guint)count)
            pull_die("only %u mapped slots hold pages >= %" G_GINT64_FORMAT ", %d wanted",
                     pool->len, min_page, count);
        g_autoptr(GRand) rand = g_rand_new_with_seed((guint32)seed);
        for (gint i = 0; i < count; i++) {      /* partial Fisher-Yates: distinct slots */
            guint j = (guint)g_rand_int_range(rand, i, (gint32)pool->len);
            uint64_t t = g_array_index(pool, uint64_t, j);
            g_array_index(pool, uint64_t, j) = g_array_index(pool, uint64_t, i);
            g_array_append_val(pick, t);
        }
    }

    struct nbd_handle *h = nbd_create();
    if (!h || nbd_connect_uri(h, uri) < 0)
        pull_die("cannot connect to %s: %s", uri, nbd_get_error());
    if (nbd_get_size(h) != (int64_t)(slots * PULL_PAGE))
        pull_die("%s has %" PRId64 " bytes, expected %" PRIu64 " slots", uri, nbd_get_size(h),
                 slots);
    unsigned char buf[PULL_PAGE];
    double *lat = g_new(double, pick->len);
    size_t n_ok = 0, wrong = 0, errors = 0;
    int first_errno = 0;
    gint64 start = g_get_monotonic_time();
    for (guint i = 0; i < pick->len; i++) {
        uint64_t s = g_array_index(pick, uint64_t, i), page = table[s];
        gint64 t0 = g_get_monotonic_time();
        int rc = nbd_pread(h, buf, PULL_PAGE, s * PULL_PAGE, 0);
        double us = (double)(g_get_monotonic_time() - t0);
        if (rc < 0) {
            int e = nbd_get_errno();
            if (!errors++) {
                first_errno = e;
                fprintf(stderr, "pull-faults: reading slot %" PRIu64 " (source page %" PRIu64
                        ") failed after %.0f ms: %s\n", s, page, us / 1000, nbd_get_error());
            }
            if (nbd_aio_is_dead(h) || nbd_aio_is_closed(h))
                pull_die("the connection to %s is gone: %s", uri, nbd_get_error());
            continue;
        }
        uint32_t got = pull_crc(buf);
        if (got != crcs[page]) {
            fprintf(stderr, "pull-faults: WRONG DATA in slot %" PRIu64 " (source page %" PRIu64
                    "): crc %08" PRIx32 ", the source page has %08" PRIx32 "\n", s, page, got,
                    crcs[page]);
            wrong++;
            continue;
        }
        lat[n_ok++] = us;
    }
    double secs = (double)(g_get_monotonic_time() - start) / 1e6;
    nbd_shutdown(h, 0);
    nbd_close(h);
    if (lat_path) {
        FILE *f = fopen(lat_path, "a");
        if (!f)
            pull_die("cannot open %s: %s", lat_path, strerror(errno));
        for (size_t i = 0; i < n_ok; i++)
            fprintf(f, "%.0f\n", lat[i]);
        if (fclose(f) != 0)
            pull_die("writing %s: %s", lat_path, strerror(errno));
    }
    qsort(lat, n_ok, sizeof *lat, pull_cmp_double);
    printf("{\"reads\":%u,\"ok\":%zu,\"wrong\":%zu,\"errors\":%zu,\"first_errno\":\"%s\","
           "\"p50_us\":%.0f,\"p99_us\":%.0f,\"max_us\":%.0f,\"seconds\":%.3f}\n", pick->len, n_ok,
           wrong, errors, first_errno ? strerrorname_np(first_errno) : "", pull_quantile(lat, n_ok, 0.5),
           pull_quantile(lat, n_ok, 0.99), n_ok ? lat[n_ok - 1] : 0, secs);
    g_free(lat);
    g_free(table);
    g_free(crcs);
    g_free(uri);
    g_free(lat_path);
    g_strfreev(slot_args);
    return wrong ? 1 : errors ? 3 : 0;
}
