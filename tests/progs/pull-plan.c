/* pull-plan: a shuffled slot map for a migration test, as the swap-out of
 * a real guest leaves it: the source's pages cut into runs of very
 * different lengths (single pages up to 2048), the runs laid out in
 * the swap device in a random order, with unmapped slots between some.
 *
 *   pull-plan [--seed N] PAGES SLOTS > MAPFILE
 *
 * Every source page 0..PAGES-1 is mapped exactly once; SLOTS >= PAGES.
 * Prints one "SLOT PAGE COUNT" line per run, i.e. per 'map' command. */
#include "pull-common.h"

typedef struct {
    uint64_t page, count;
} Run;

int main(int argc, char **argv)
{
    gint64 seed = 1;
    GOptionEntry entries[] = {
        { "seed", 0, 0, G_OPTION_ARG_INT64, &seed, "Seed of the cuts and the order", "N" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_set_prgname("pull-plan");
    g_autoptr(GError) error = NULL;
    g_autoptr(GOptionContext) ctx = g_option_context_new("PAGES SLOTS - print a shuffled slot map");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &error))
        pull_die("%s (see --help)", error->message);
    if (argc != 3)
        pull_die("usage: pull-plan [--seed N] PAGES SLOTS");
    uint64_t pages = pull_parse_u64("PAGES", argv[1]);
    uint64_t slots = pull_parse_u64("SLOTS", argv[2]);
    if (pages == 0 || slots < pages)
        pull_die("need 0 < PAGES <= SLOTS (got %" PRIu64 " pages, %" PRIu64 " slots)", pages,
                 slots);

    g_autoptr(GRand) rand = g_rand_new_with_seed((guint32)seed);
    g_autoptr(GArray) runs = g_array_new(FALSE, FALSE, sizeof(Run));
    for (uint64_t page = 0; page < pages;) {
        gint32 roll = g_rand_int_range(rand, 0, 100);
        uint64_t len = roll < 45 ? (uint64_t)g_rand_int_range(rand, 1, 5)
                     : roll < 75 ? (uint64_t)g_rand_int_range(rand, 5, 65)
                     : roll < 92 ? (uint64_t)g_rand_int_range(rand, 65, 513)
                                 : (uint64_t)g_rand_int_range(rand, 513, 2049);
        len = MIN(len, pages - page);
        g_array_append_val(runs, ((Run){ page, len }));
        page += len;
    }
    /* Fisher-Yates: the slot order of the runs. */
    for (guint i = runs->len; i > 1; i--) {
        guint j = (guint)g_rand_int_range(rand, 0, (gint32)i);
        Run t = g_array_index(runs, Run, i - 1);
        g_array_index(runs, Run, i - 1) = g_array_index(runs, Run, j);
        g_array_index(runs, Run, j) = t;
    }
    /* Spread the spare slots as gaps before some runs. */
    uint64_t spare = slots - pages, slot = 0;
    uint64_t gap_max = spare / runs->len * 2 + 1;
    for (guint i = 0; i < runs->len; i++) {
        Run *r = &g_array_index(runs, Run, i);
        uint64_t gap = (uint64_t)g_rand_double_range(rand, 0, (double)gap_max);
        gap = MIN(spare, gap);           /* (MIN evaluates its arguments twice) */
        slot += gap;
        spare -= gap;
        printf("%" PRIu64 " %" PRIu64 " %" PRIu64 "\n", slot, r->page, r->count);
        slot += r->count;
    }
    if (fflush(stdout) != 0 || ferror(stdout))
        pull_die("writing the map: %s", strerror(errno));
    return 0;
}
