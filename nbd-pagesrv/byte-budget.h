/* A count of bytes that may be held at once (request buffers in flight),
 * which a thread waits on until enough are free. One per connection and
 * one for the whole server (limits.h). */
#ifndef SWAPCOPY_BYTE_BUDGET_H
#define SWAPCOPY_BYTE_BUDGET_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct {
    GMutex lock;
    GCond cond;
    uint64_t limit, used;          /* under lock */
    bool stopping;                 /* under lock: acquire gives up */
} ByteBudget;

void byte_budget_init(ByteBudget *b, uint64_t limit);
void byte_budget_clear(ByteBudget *b);
/* Wait until n bytes (n <= limit) are free and take them. False, taking
 * nothing, once byte_budget_stop() was called. */
bool byte_budget_acquire(ByteBudget *b, uint64_t n);
void byte_budget_release(ByteBudget *b, uint64_t n);
/* Every waiter, now and later, gives up. */
void byte_budget_stop(ByteBudget *b);
uint64_t byte_budget_used(ByteBudget *b);

#endif
