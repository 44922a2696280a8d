/* LD_PRELOAD library that makes a helper in the swap path safe to page
 * through, as nbd-pagesrv makes itself (daemon-safety.c): memory locked as
 * it is touched, I/O treated as part of reclaim, never the OOM killer's
 * choice. For nbdfuse, which sits between the loop device and nbd-pagesrv
 * where the kernel has no nbd driver: if its own pages were paged out to
 * the device it serves (these hosts run a DAMON page-out scheme), the
 * swap-in that needs them would wait on itself. Failures are reported and
 * the program runs on: an unlocked helper is a risk, not an error.
 * Deliberately without GLib or sanitizers: it runs inside another program. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

static void warn(const char *what, int err, const char *hint)
{
    fprintf(stderr, "swap-safe-preload (pid %d): %s failed: %s; %s\n", (int)getpid(), what,
            strerror(err), hint);
}

__attribute__((constructor)) static void make_swap_safe(void)
{
    if (syscall(SYS_mlockall, MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) < 0)
        warn("mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT)", errno,
             "this process's memory may be paged out to the device it serves: run as root");
    if (prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) < 0)
        warn("prctl(PR_SET_IO_FLUSHER)", errno,
             "its I/O may stall under memory pressure: needs CAP_SYS_RESOURCE, Linux >= 5.6");
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, "-1000", 5) != 5)
        warn("writing -1000 to /proc/self/oom_score_adj", errno,
             "the OOM killer may pick it: needs CAP_SYS_RESOURCE");
    if (fd >= 0)
        close(fd);
}
