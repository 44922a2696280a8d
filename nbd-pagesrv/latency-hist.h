/* A lock-free latency histogram: log-linear buckets (8 per power of two,
 * so any percentile is within 12.5% of the true value), updated with
 * atomic adds from any thread. */
#ifndef SWAPCOPY_LATENCY_HIST_H
#define SWAPCOPY_LATENCY_HIST_H

#include <glib.h>
#include <stdint.h>

#define LATENCY_SUB_BITS 3
#define LATENCY_BUCKETS (16 + 8 * 40)

typedef struct {
    uint64_t bucket[LATENCY_BUCKETS];
    uint64_t count;
    uint64_t sum_us;
    uint64_t max_us;
} LatencyHist;

void latency_hist_reset(LatencyHist *h);
void latency_hist_add(LatencyHist *h, uint64_t us);
/* q in [0, 1]; returns the upper bound of the bucket holding quantile q,
 * 0 when empty. */
uint64_t latency_hist_quantile(const LatencyHist *h, double q);
/* Appends {"count":..,"mean":..,"p50":..,"p90":..,"p99":..,"max":..,
 * "buckets":[[upper_us,count],...]} (non-empty buckets only). */
void latency_hist_to_json(const LatencyHist *h, GString *out);

#endif
