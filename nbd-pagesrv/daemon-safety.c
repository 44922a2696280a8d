#include "daemon-safety.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
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

void daemon_make_swap_safe(bool lock_memory)
{
#ifdef SWAPCOPY_SANITIZED
    /* ASan reserves terabytes of shadow memory that mlockall cannot lock. */
    if (lock_memory)
        g_message("sanitizer build: not locking memory (ASan's shadow cannot be locked)");
    lock_memory = false;
#endif
    if (lock_memory && mlockall(MCL_CURRENT | MCL_FUTURE) < 0)
        g_warning("mlockall failed: %s: the server's own memory may be swapped out to the "
                  "device it serves (deadlock risk); run as root or raise RLIMIT_MEMLOCK, "
                  "or pass --no-mlock to silence this", g_strerror(errno));
    /* Lets the kernel treat our I/O as part of reclaim (Linux >= 5.6). */
    if (prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) < 0)
        g_warning("prctl(PR_SET_IO_FLUSHER) failed: %s: writes may stall under memory "
                  "pressure; needs CAP_SYS_RESOURCE and Linux >= 5.6", g_strerror(errno));
    lower_oom_score();
}
