/* Happens-before that passes through something ThreadSanitizer cannot see
 * (GLib's GThreadPool queue is built on futexes): the producer releases
 * the object it hands over, the consumer acquires it. Nothing outside
 * TSan builds (SWAPCOPY_TSAN, make check-tsan). */
#ifndef SWAPCOPY_TSAN_ANNOTATE_H
#define SWAPCOPY_TSAN_ANNOTATE_H

#ifdef SWAPCOPY_TSAN
#include <sanitizer/tsan_interface.h>
#define TSAN_RELEASE(p) __tsan_release((void *)(p))
#define TSAN_ACQUIRE(p) __tsan_acquire((void *)(p))
#else
#define TSAN_RELEASE(p) ((void)(p))
#define TSAN_ACQUIRE(p) ((void)(p))
#endif

#endif
