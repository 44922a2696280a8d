/* Emptying every CPU's LRU batches before a page-out pass.
 *
 * A page the kernel has just allocated, swapped in or finished writing
 * waits in a small per-CPU batch before it is (back) on the LRU lists, and
 * MADV_PAGEOUT cannot isolate it until then. MADV_PAGEOUT only drains the
 * batch of the CPU it runs on; a batch left on an idle CPU can stay there
 * indefinitely, so on a quiet 2-CPU host a dozen marker pages were never
 * written, or never left the swap cache, within 30 s, and arming was
 * refused. Two ways in from user space: mbind(MPOL_MF_MOVE) drains every
 * CPU's batches before it looks for pages to move (and moves nothing with
 * the default policy on a scratch page); without NUMA support, an
 * MADV_PAGEOUT run from each CPU this thread may use. */
#include <errno.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "swapstub-internal.h"

static bool pageout_here(void *scratch, GError **error)
{
    if (madvise(scratch, SS_PAGE, MADV_PAGEOUT) == 0)
        return true;
    g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                "MADV_PAGEOUT of a scratch page (to drain this CPU's LRU batch) failed: %s; "
                "the kernel needs MADV_PAGEOUT (Linux 5.4 or later)", g_strerror(errno));
    return false;
}

/* The kernel's <linux/mempolicy.h> values; glibc has no mbind wrapper. */
#define SS_MPOL_DEFAULT 0
#define SS_MPOL_MF_MOVE (1 << 1)

static bool drain_all_by_mbind(void *scratch)
{
    return syscall(SYS_mbind, scratch, (unsigned long)SS_PAGE, SS_MPOL_DEFAULT, NULL, 0ul,
                   (unsigned)SS_MPOL_MF_MOVE) == 0;
}

static bool drain_each_cpu(void *scratch, GError **error)
{
    /* Every CPU the process may use (its main thread's set: this thread
     * may be pinned to one CPU while it arms, swap-alloc-prime.c). */
    cpu_set_t allowed, saved;
    if (sched_getaffinity(0, sizeof saved, &saved) < 0 ||
        sched_getaffinity(getpid(), sizeof allowed, &allowed) < 0) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "sched_getaffinity of the arming thread failed: %s", g_strerror(errno));
        return false;
    }
    bool ok = true;
    for (int cpu = 0; ok && cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &allowed))
            continue;
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        /* A CPU that went offline meanwhile has no batch left to drain. */
        if (sched_setaffinity(0, sizeof one, &one) < 0)
            continue;
        ok = pageout_here(scratch, error);
    }
    if (sched_setaffinity(0, sizeof saved, &saved) < 0 && ok) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "restoring the arming thread's CPU affinity failed: %s", g_strerror(errno));
        ok = false;
    }
    return ok;
}

bool swapstub_drain_lru_batches(GError **error)
{
    void *scratch = mmap(NULL, SS_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                         -1, 0);
    if (scratch == MAP_FAILED) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "mmap of a scratch page (to drain the LRU batches) failed: %s",
                    g_strerror(errno));
        return false;
    }
    bool ok = drain_all_by_mbind(scratch) || drain_each_cpu(scratch, error);
    if (munmap(scratch, SS_PAGE) < 0)
        g_warning("munmap of the LRU-drain scratch page failed: %s", g_strerror(errno));
    return ok;
}
