#include "target.h"
#include "remote-syscall.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_process_madvise
#define SYS_process_madvise 440
#endif

#define PAGE 4096u

static const char *who(const Target *t, char *buf, size_t n)
{
    if (target_is_self(t))
        return "this process";
    snprintf(buf, n, "process %d", (int)t->pid);
    return buf;
}

bool target_open(Target *t, pid_t pid, GError **error)
{
    t->pid = pid;
    t->pidfd = -1;
    g_autofree char *pm = pid ? g_strdup_printf("/proc/%d/pagemap", (int)pid)
                              : g_strdup("/proc/self/pagemap");
    if (pid) {
        t->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (t->pidfd < 0) {
            g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                        "pidfd_open(%d) failed: %s (is the process running? Linux >= 5.10 "
                        "needed)", (int)pid, g_strerror(errno));
            return false;
        }
    }
    t->pagemap_fd = open(pm, O_RDONLY | O_CLOEXEC);
    if (t->pagemap_fd < 0) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot open %s: %s (swap offsets need root / CAP_SYS_ADMIN)", pm,
                    g_strerror(errno));
        if (t->pidfd >= 0)
            close(t->pidfd);
        return false;
    }
    return true;
}

void target_close(Target *t)
{
    if (t->pidfd >= 0)
        close(t->pidfd);
    if (t->pagemap_fd >= 0)
        close(t->pagemap_fd);
    t->pidfd = t->pagemap_fd = -1;
}

static bool remote_rw(Target *t, bool write, uint64_t addr, void *buf, size_t len,
                      GError **error)
{
    size_t done = 0;
    while (done < len) {
        struct iovec local = { (char *)buf + done, len - done };
        struct iovec remote = { (void *)(uintptr_t)(addr + done), len - done };
        ssize_t n = write ? process_vm_writev(t->pid, &local, 1, &remote, 1, 0)
                          : process_vm_readv(t->pid, &local, 1, &remote, 1, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int err = n < 0 ? errno : EFAULT;
            g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err),
                        "process_vm_%sv at 0x%" G_GINT64_MODIFIER "x (%zu bytes) of process %d "
                        "failed: %s (a read of a page the source could not deliver ends like "
                        "this too)", write ? "write" : "read", addr + done, len - done,
                        (int)t->pid, g_strerror(err));
            return false;
        }
        done += (size_t)n;
    }
    return true;
}

bool target_write(Target *t, uint64_t addr, const void *buf, size_t len, GError **error)
{
    if (target_is_self(t)) {
        memcpy((void *)(uintptr_t)addr, buf, len);
        return true;
    }
    return remote_rw(t, true, addr, (void *)buf, len, error);
}

bool target_read(Target *t, uint64_t addr, void *buf, size_t len, GError **error)
{
    if (target_is_self(t)) {
        memcpy(buf, (const void *)(uintptr_t)addr, len);
        return true;
    }
    return remote_rw(t, false, addr, buf, len, error);
}

static bool heads_rw(Target *t, bool write, uint64_t addr, size_t n, size_t head_len,
                     void *heads, GError **error)
{
    if (target_is_self(t)) {
        for (size_t i = 0; i < n; i++) {
            void *page = (void *)(uintptr_t)(addr + i * PAGE);
            void *head = (char *)heads + i * head_len;
            memcpy(write ? page : head, write ? head : page, head_len);
        }
        return true;
    }
    enum { IOVS = 1024 };        /* UIO_MAXIOV */
    struct iovec remote[IOVS];
    for (size_t i = 0; i < n;) {
        size_t k = MIN((size_t)IOVS, n - i);
        for (size_t j = 0; j < k; j++)
            remote[j] = (struct iovec){ (void *)(uintptr_t)(addr + (i + j) * PAGE), head_len };
        struct iovec local = { (char *)heads + i * head_len, k * head_len };
        ssize_t got = write ? process_vm_writev(t->pid, &local, 1, remote, k, 0)
                            : process_vm_readv(t->pid, &local, 1, remote, k, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got != (ssize_t)(k * head_len)) {
            /* A short transfer stops at the first page it could not fault in. */
            int err = got < 0 ? errno : EFAULT;
            size_t at = i + (got > 0 ? (size_t)got / head_len : 0);
            g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err),
                        "process_vm_%sv of page 0x%" G_GINT64_MODIFIER "x of process %d "
                        "failed: %s (a read of a page the source could not deliver ends like "
                        "this too)", write ? "write" : "read", addr + at * PAGE, (int)t->pid,
                        g_strerror(err));
            return false;
        }
        i += k;
    }
    return true;
}

bool target_read_heads(Target *t, uint64_t addr, size_t n, size_t head_len, void *heads,
                       GError **error)
{
    return heads_rw(t, false, addr, n, head_len, heads, error);
}

bool target_write_heads(Target *t, uint64_t addr, size_t n, size_t head_len,
                        const void *heads, GError **error)
{
    return heads_rw(t, true, addr, n, head_len, (void *)heads, error);
}

static const char *advice_name(int advice)
{
    switch (advice) {
    case MADV_PAGEOUT: return "MADV_PAGEOUT";
    case MADV_POPULATE_READ: return "MADV_POPULATE_READ";
    case MADV_POPULATE_WRITE: return "MADV_POPULATE_WRITE";
    case MADV_NOHUGEPAGE: return "MADV_NOHUGEPAGE";
    case MADV_WILLNEED: return "MADV_WILLNEED";
    default: return "madvise";
    }
}

bool target_madvise(Target *t, uint64_t addr, size_t len, int advice, GError **error)
{
    char b[32];
    if (target_is_self(t)) {
        if (madvise((void *)(uintptr_t)addr, len, advice) == 0)
            return true;
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "%s of %zu bytes at 0x%" G_GINT64_MODIFIER "x in %s failed: %s",
                    advice_name(advice), len, addr, who(t, b, sizeof b), g_strerror(errno));
        return false;
    }
    /* process_madvise takes only these among the advice we use. Only
     * MADV_POPULATE_READ is run inside the process (remote-syscall.h): it
     * reads pages, where other advice (POPULATE_WRITE, DONTNEED, FREE)
     * would change a running guest's memory under it. */
    if (advice == MADV_POPULATE_READ)
        return ss_remote_madvise(t->pid, addr, len, advice, error);
    g_assert(advice == MADV_PAGEOUT || advice == MADV_WILLNEED);
    size_t done = 0;
    while (done < len) {
        struct iovec iov = { (void *)(uintptr_t)(addr + done), len - done };
        long n = syscall(SYS_process_madvise, t->pidfd, &iov, 1, advice, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int err = n < 0 ? errno : EIO;
            g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err),
                        "process_madvise(%s) of %zu bytes at 0x%" G_GINT64_MODIFIER "x in %s "
                        "failed: %s (needs root and Linux >= 5.10)", advice_name(advice),
                        len - done, addr + done, who(t, b, sizeof b), g_strerror(err));
            return false;
        }
        done += (size_t)n;
    }
    return true;
}

bool target_mincore(Target *t, uint64_t addr, size_t pages, unsigned char *vec, GError **error)
{
    if (!target_is_self(t))
        return ss_remote_mincore(t->pid, addr, pages, vec, error);
    if (mincore((void *)(uintptr_t)addr, pages * PAGE, vec) == 0)
        return true;
    g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                "mincore of %zu pages at 0x%" G_GINT64_MODIFIER "x failed: %s", pages, addr,
                g_strerror(errno));
    return false;
}

bool target_pagemap(Target *t, uint64_t addr, size_t pages, uint64_t *out, GError **error)
{
    size_t want = pages * sizeof(uint64_t), done = 0;
    off_t off = (off_t)(addr / PAGE * sizeof(uint64_t));
    while (done < want) {
        ssize_t n = pread(t->pagemap_fd, (char *)out + done, want - done, off + (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            char b[32];
            g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(n < 0 ? errno : EIO),
                        "reading the pagemap of %s failed: %s", who(t, b, sizeof b),
                        n < 0 ? g_strerror(errno) : "short read");
            return false;
        }
        done += (size_t)n;
    }
    return true;
}

GStrv target_maps_lines(pid_t pid, GError **error)
{
    g_autofree char *path = pid ? g_strdup_printf("/proc/%d/maps", (int)pid)
                                : g_strdup("/proc/self/maps");
    g_autofree char *maps = NULL;
    g_autoptr(GError) err = NULL;
    if (!g_file_get_contents(path, &maps, NULL, &err)) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "cannot read %s: %s", path,
                    err->message);
        return NULL;
    }
    return g_strsplit(maps, "\n", -1);
}

bool target_check_private_anon(Target *t, uint64_t addr, uint64_t len, GError **error)
{
    char b[32];
    uint64_t end = addr + len;
    g_auto(GStrv) lines = target_maps_lines(t->pid, error);
    if (!lines)
        return false;
    for (char **l = lines; *l && **l; l++) {
        unsigned long long lo, hi, off, inode;
        char perms[5], dev[16];
        int name_at = 0;
        if (sscanf(*l, "%llx-%llx %4s %llx %15s %llu %n", &lo, &hi, perms, &off, dev, &inode,
                   &name_at) < 6)
            continue;
        if (addr < lo || addr >= hi)
            continue;
        const char *name = name_at ? *l + name_at : "";
        if (end > hi) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                        "0x%" G_GINT64_MODIFIER "x+%" G_GUINT64_FORMAT " in %s runs past the "
                        "end of its mapping (0x%llx-0x%llx); arm one mapping at a time", addr,
                        len, who(t, b, sizeof b), lo, hi);
            return false;
        }
        if (perms[0] != 'r' || perms[1] != 'w' || perms[3] != 'p' || inode != 0 ||
            (*name && *name != '[')) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                        "0x%llx-0x%llx in %s is %s %s: only private anonymous read-write "
                        "memory can be armed (shared memory and files cannot: see "
                        "docs/swapstub.md)", lo, hi, who(t, b, sizeof b), perms,
                        *name ? name : "(anonymous)");
            return false;
        }
        return true;
    }
    g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                "0x%" G_GINT64_MODIFIER "x is not mapped in %s", addr, who(t, b, sizeof b));
    return false;
}
