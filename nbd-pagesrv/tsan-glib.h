/* ThreadSanitizer builds only (make check-tsan puts it in front of every
 * file with -include). GLib's GMutex and GCond are built on futexes, which
 * TSan cannot see: without help every lock would look absent and every
 * variable it guards raced. The calls nbd-pagesrv makes are wrapped here
 * with TSan's mutex annotations, so that TSan knows what they order; the
 * code itself is unchanged. Hand-offs through GLib's own queues (the
 * GThreadPool) are annotated where they happen (tsan-annotate.h). */
#ifndef SWAPCOPY_TSAN_GLIB_H
#define SWAPCOPY_TSAN_GLIB_H

#include <glib.h>
#include <sanitizer/tsan_interface.h>

static inline void tsan_g_mutex_lock(GMutex *m)
{
    __tsan_mutex_pre_lock(m, 0);
    g_mutex_lock(m);
    __tsan_mutex_post_lock(m, 0, 0);
}

static inline void tsan_g_mutex_unlock(GMutex *m)
{
    __tsan_mutex_pre_unlock(m, 0);
    g_mutex_unlock(m);
    __tsan_mutex_post_unlock(m, 0);
}

/* A wait gives the mutex up and takes it back. */
static inline void tsan_g_cond_wait(GCond *c, GMutex *m)
{
    __tsan_mutex_pre_unlock(m, 0);
    __tsan_mutex_post_unlock(m, 0);
    g_cond_wait(c, m);
    __tsan_mutex_pre_lock(m, 0);
    __tsan_mutex_post_lock(m, 0, 0);
}

static inline gboolean tsan_g_cond_wait_until(GCond *c, GMutex *m, gint64 end)
{
    __tsan_mutex_pre_unlock(m, 0);
    __tsan_mutex_post_unlock(m, 0);
    gboolean r = g_cond_wait_until(c, m, end);
    __tsan_mutex_pre_lock(m, 0);
    __tsan_mutex_post_lock(m, 0, 0);
    return r;
}

static inline void tsan_g_mutex_init(GMutex *m)
{
    g_mutex_init(m);
    __tsan_mutex_create(m, 0);
}

static inline void tsan_g_mutex_clear(GMutex *m)
{
    __tsan_mutex_destroy(m, 0);
    g_mutex_clear(m);
}

#define g_mutex_lock tsan_g_mutex_lock
#define g_mutex_unlock tsan_g_mutex_unlock
#define g_cond_wait tsan_g_cond_wait
#define g_cond_wait_until tsan_g_cond_wait_until
#define g_mutex_init tsan_g_mutex_init
#define g_mutex_clear tsan_g_mutex_clear

#endif
