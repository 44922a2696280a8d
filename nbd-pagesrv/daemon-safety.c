#include "daemon-safety.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

static void lower_oom_score(void)
{
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, "-1000", 5) != 5)
        g_warning("cannot lower the OOM score (/proc/self/oom_score_adj: %s): under memory "
                  "pressure the kernel may kill this swap server; needs root with CAP_SYS_RESOURCE",
                  g_strerror(errno));
    if (fd >= 0)
        close(fd);
}

/* Locks every page as it is first touched (MCL_ONFAULT), not every
 * mapping up front: the slot table and the thread stacks are large,
 * mostly untouched reservations, and under ASan so is the shadow memory.
 * The raw system call, because ASan intercepts mlockall() and quietly
 * ignores it: a sanitizer build would otherwise run unlocked, and a
 * page-out of its own memory to the device it serves is a deadlock
 * (seen as reads that time out to EIO). */
static void lock_memory_on_fault(void)
{
    if (syscall(SYS_mlockall, MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) < 0)
        g_warning("mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT) failed: %s: the server's own "
                  "memory may be swapped out to the device it serves (deadlock risk); run as "
                  "root or raise RLIMIT_MEMLOCK, or pass --no-mlock to silence this",
                  g_strerror(errno));
}

void daemon_make_swap_safe(bool lock_memory)
{
    if (lock_memory)
        lock_memory_on_fault();
    /* Lets the kernel treat our I/O as part of reclaim (Linux >= 5.6). */
    if (prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) < 0)
        g_warning("prctl(PR_SET_IO_FLUSHER) failed: %s: writes may stall under memory "
                  "pressure; needs CAP_SYS_RESOURCE and Linux >= 5.6", g_strerror(errno));
    lower_oom_score();
}
