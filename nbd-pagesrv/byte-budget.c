#include "byte-budget.h"

void byte_budget_init(ByteBudget *b, uint64_t limit)
{
    g_mutex_init(&b->lock);
    g_cond_init(&b->cond);
    b->limit = limit;
    b->used = 0;
    b->stopping = false;
}

void byte_budget_clear(ByteBudget *b)
{
    g_mutex_clear(&b->lock);
    g_cond_clear(&b->cond);
}

bool byte_budget_acquire(ByteBudget *b, uint64_t n)
{
    /* Callers size n from a validated request (at most NBD_MAX_REQUEST). */
    g_assert(n <= b->limit);
    g_mutex_lock(&b->lock);
    while (!b->stopping && b->used + n > b->limit)
        g_cond_wait(&b->cond, &b->lock);
    bool ok = !b->stopping;
    if (ok)
        b->used += n;
    g_mutex_unlock(&b->lock);
    return ok;
}

void byte_budget_release(ByteBudget *b, uint64_t n)
{
    g_mutex_lock(&b->lock);
    g_assert(n <= b->used);
    b->used -= n;
    g_cond_broadcast(&b->cond);
    g_mutex_unlock(&b->lock);
}

void byte_budget_stop(ByteBudget *b)
{
    g_mutex_lock(&b->lock);
    b->stopping = true;
    g_cond_broadcast(&b->cond);
    g_mutex_unlock(&b->lock);
}

uint64_t byte_budget_used(ByteBudget *b)
{
    g_mutex_lock(&b->lock);
    uint64_t used = b->used;
    g_mutex_unlock(&b->lock);
    return used;
}
