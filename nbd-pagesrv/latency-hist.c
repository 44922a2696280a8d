#include "latency-hist.h"

#include <stdbool.h>
#include <string.h>

static unsigned bucket_of(uint64_t us)
{
    if (us < 16)
        return (unsigned)us;
    unsigned e = 63 - (unsigned)__builtin_clzll(us);   /* us >= 2^e, e >= 4 */
    unsigned sub = (unsigned)(us >> (e - LATENCY_SUB_BITS)) & 7;
    unsigned b = 16 + (e - 4) * 8 + sub;
    return b < LATENCY_BUCKETS ? b : LATENCY_BUCKETS - 1;
}

/* Largest value that falls into bucket b. */
static uint64_t bucket_upper(unsigned b)
{
    if (b < 16)
        return b;
    unsigned e = (b - 16) / 8 + 4, sub = (b - 16) % 8;
    uint64_t base = UINT64_C(1) << e, step = base >> LATENCY_SUB_BITS;
    return base + step * (sub + 1) - 1;
}

void latency_hist_reset(LatencyHist *h)
{
    memset(h, 0, sizeof *h);
}

void latency_hist_add(LatencyHist *h, uint64_t us)
{
    __atomic_add_fetch(&h->bucket[bucket_of(us)], 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&h->count, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&h->sum_us, us, __ATOMIC_RELAXED);
    uint64_t old = __atomic_load_n(&h->max_us, __ATOMIC_RELAXED);
    while (us > old &&
           !__atomic_compare_exchange_n(&h->max_us, &old, us, true,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
}

uint64_t latency_hist_quantile(const LatencyHist *h, double q)
{
    uint64_t total = __atomic_load_n(&h->count, __ATOMIC_RELAXED);
    if (total == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)total);
    if (rank >= total)
        rank = total - 1;
    uint64_t seen = 0;
    for (unsigned b = 0; b < LATENCY_BUCKETS; b++) {
        seen += __atomic_load_n(&h->bucket[b], __ATOMIC_RELAXED);
        if (seen > rank) {
            uint64_t upper = bucket_upper(b), max = __atomic_load_n(&h->max_us, __ATOMIC_RELAXED);
            return upper < max ? upper : max;
        }
    }
    return __atomic_load_n(&h->max_us, __ATOMIC_RELAXED);
}

void latency_hist_to_json(const LatencyHist *h, GString *out)
{
    uint64_t count = __atomic_load_n(&h->count, __ATOMIC_RELAXED);
    uint64_t sum = __atomic_load_n(&h->sum_us, __ATOMIC_RELAXED);
    g_string_append_printf(out,
        "{\"count\":%" G_GUINT64_FORMAT ",\"mean\":%" G_GUINT64_FORMAT
        ",\"p50\":%" G_GUINT64_FORMAT ",\"p90\":%" G_GUINT64_FORMAT
        ",\"p99\":%" G_GUINT64_FORMAT ",\"max\":%" G_GUINT64_FORMAT ",\"buckets\":[",
        count, count ? sum / count : 0,
        latency_hist_quantile(h, 0.50), latency_hist_quantile(h, 0.90),
        latency_hist_quantile(h, 0.99), __atomic_load_n(&h->max_us, __ATOMIC_RELAXED));
    bool first = true;
    for (unsigned b = 0; b < LATENCY_BUCKETS; b++) {
        uint64_t n = __atomic_load_n(&h->bucket[b], __ATOMIC_RELAXED);
        if (n == 0)
            continue;
        g_string_append_printf(out, "%s[%" G_GUINT64_FORMAT ",%" G_GUINT64_FORMAT "]",
                               first ? "" : ",", bucket_upper(b), n);
        first = false;
    }
    g_string_append(out, "]}");
}
