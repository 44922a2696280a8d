#include "page-store.h"

#include "export.h"
#include "nbd-proto.h"
#include "swapstub-marker.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>

#define KIND_SHIFT 60
#define PAYLOAD_MASK ((UINT64_C(1) << KIND_SHIFT) - 1)
#define REMOTE_EXPORT_SHIFT 48
#define REMOTE_PAGE_MASK ((UINT64_C(1) << REMOTE_EXPORT_SHIFT) - 1)
#define POOL_CHUNK_PAGES 512          /* RAM pool grows 2 MiB at a time */
#define URGENT_READ_PAGES 16          /* reads of up to 64 KiB: a fault, not a batch */
#define STRIPES 256                   /* slot locks: slot i uses lock i % STRIPES */

static inline SlotKind kind_of(uint64_t e) { return (SlotKind)(e >> KIND_SHIFT); }
static inline uint64_t payload_of(uint64_t e) { return e & PAYLOAD_MASK; }
static inline uint64_t make_entry(SlotKind k, uint64_t payload)
{
    return (uint64_t)k << KIND_SHIFT | payload;
}
static inline uint64_t remote_payload(unsigned export_id, uint64_t page)
{
    return (uint64_t)export_id << REMOTE_EXPORT_SHIFT | page;
}

/* Every change of a slot is made under its lock, but some readers look
 * without it (page_store_slot_kind, block status, the read path's "may
 * this block?"), with atomic loads: so every store is atomic too, or those
 * loads race with it. Reads under the lock may stay plain. */
#define SLOT_SET(ps, s, v) __atomic_store_n(&(ps)->slot[s], (v), __ATOMIC_RELAXED)

struct PageStore {
    uint64_t size;
    uint64_t nslots;
    uint64_t *slot;               /* nslots entries, mmap'd so untouched parts cost nothing */
    GMutex stripe[STRIPES];

    /* RAM pool: pages are addressed by index; freed indices are reused.
     * chunk[] is sized for mem_limit once and never moves: readers index
     * it under a slot lock only, without pool_lock, so a realloc while the
     * pool grows would pull it from under them. An entry is set (under
     * pool_lock) before any index in it is handed out. */
    GMutex pool_lock;
    unsigned char **chunk;
    uint64_t nchunks;             /* chunks mapped so far */
    uint64_t pool_used;           /* indices handed out so far (high water) */
    uint64_t pool_max;            /* mem_limit in pages */
    GArray *pool_free;            /* of uint64_t */
    GThread *prealloc_thread;
    bool prealloc_stop;           /* atomic */
    bool prealloc_done;           /* atomic; true when there is none */

    int spill_fd;
    char *spill_path;
    uint64_t spill_failures;      /* atomic; only the first few are logged */

    PageFetchFn fetch;
    PagePrefetchFn prefetch;
    unsigned cluster;
    void *fetch_opaque;

    uint64_t n_ram, n_file, n_remote, n_marker, n_landed;   /* atomics */
    uint64_t n_marker_reads;                                /* atomic */
    bool landing;                                 /* atomic */
    bool markers_on;                              /* atomic */
    uint64_t marker_cookie;                       /* atomic */
};

static void remote_ref(uint64_t e, unsigned *export_id, uint64_t *page);
static void prefetch_window(PageStore *ps, uint64_t first, uint64_t last);

static GMutex *lock_for(PageStore *ps, uint64_t slot)
{
    return &ps->stripe[slot % STRIPES];
}

static unsigned char *pool_page(PageStore *ps, uint64_t idx)
{
    return ps->chunk[idx / POOL_CHUNK_PAGES] + (idx % POOL_CHUNK_PAGES) * PAGE_SIZE_BYTES;
}

/* A new 2 MiB chunk of the pool, its pages already allocated: one
 * MAP_POPULATE costs far less than 512 page faults. With `touch`, every
 * page is also written once from user space: on some hypervisors (these
 * machines) the first user access to a page is what costs, ~18 us, and a
 * page written here in advance is one the fault path does not wait for. */
static unsigned char *chunk_map(PageStore *ps, bool touch)
{
    size_t len = (size_t)POOL_CHUNK_PAGES * PAGE_SIZE_BYTES;
    unsigned char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (mem == MAP_FAILED) {
        g_warning("page store: cannot grow the RAM pool (mmap of 2 MiB failed: %s); "
                  "spilling to %s instead", g_strerror(errno), ps->spill_path);
        return NULL;
    }
    for (size_t off = 0; touch && off < len; off += PAGE_SIZE_BYTES)
        ((volatile unsigned char *)mem)[off] = 0;
    return mem;
}

static uint64_t pool_chunks_max(PageStore *ps)
{
    return (ps->pool_max + POOL_CHUNK_PAGES - 1) / POOL_CHUNK_PAGES;
}

/* Returns a RAM pool index, or UINT64_MAX when the pool is at mem_limit. */
static uint64_t pool_alloc(PageStore *ps)
{
    uint64_t idx = UINT64_MAX;
    g_mutex_lock(&ps->pool_lock);
    if (ps->pool_free->len > 0) {
        idx = g_array_index(ps->pool_free, uint64_t, ps->pool_free->len - 1);
        g_array_set_size(ps->pool_free, ps->pool_free->len - 1);
    } else if (ps->pool_used < ps->pool_max) {
        uint64_t c = ps->pool_used / POOL_CHUNK_PAGES;
        if (c >= ps->nchunks) {
            unsigned char *mem = chunk_map(ps, false);
            if (!mem)
                goto out;
            ps->chunk[ps->nchunks++] = mem;
        }
        idx = ps->pool_used++;
    }
out:
    g_mutex_unlock(&ps->pool_lock);
    return idx;
}

/* --mem-prealloc: map and touch the whole pool ahead of the pages, off the
 * fault path; chunks are interchangeable, so whichever of this thread and
 * pool_alloc() maps the next one first appends it. */
static gpointer prealloc_main(gpointer data)
{
    PageStore *ps = data;
    gint64 t0 = g_get_monotonic_time();
    uint64_t done = 0;
    while (!__atomic_load_n(&ps->prealloc_stop, __ATOMIC_ACQUIRE)) {
        g_mutex_lock(&ps->pool_lock);
        bool full = ps->nchunks >= pool_chunks_max(ps);
        g_mutex_unlock(&ps->pool_lock);
        if (full)
            break;
        unsigned char *mem = chunk_map(ps, true);
        if (!mem)
            break;
        g_mutex_lock(&ps->pool_lock);
        if (ps->nchunks < pool_chunks_max(ps)) {
            ps->chunk[ps->nchunks++] = mem;
            mem = NULL;
            done++;
        }
        g_mutex_unlock(&ps->pool_lock);
        if (mem)
            munmap(mem, (size_t)POOL_CHUNK_PAGES * PAGE_SIZE_BYTES);
    }
    g_message("page store: %" G_GUINT64_FORMAT " MiB of the RAM pool preallocated in %.2f s "
              "(--mem-prealloc)", done * POOL_CHUNK_PAGES * PAGE_SIZE_BYTES >> 20,
              (double)(g_get_monotonic_time() - t0) / 1e6);
    __atomic_store_n(&ps->prealloc_done, true, __ATOMIC_RELEASE);
    return NULL;
}

static void pool_release(PageStore *ps, uint64_t idx)
{
    g_mutex_lock(&ps->pool_lock);
    g_array_append_val(ps->pool_free, idx);
    g_mutex_unlock(&ps->pool_lock);
}

static int open_spill(PageStore *ps, const char *path, GError **error)
{
    if (path) {
        ps->spill_path = g_strdup(path);
        ps->spill_fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    } else {
        ps->spill_path = g_strdup_printf("%s (unlinked temporary file)", g_get_tmp_dir());
        ps->spill_fd = open(g_get_tmp_dir(), O_RDWR | O_TMPFILE | O_CLOEXEC, 0600);
    }
    if (ps->spill_fd < 0) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot open the spill file %s: %s (give a writable path with --store)",
                    ps->spill_path, g_strerror(errno));
        return -1;
    }
    /* A tmpfs file's pages are themselves swapped out under pressure, and
     * this daemon's device is the top-priority swap: the page would be
     * written to the device it is the backing of. */
    struct statfs fs;
    if (fstatfs(ps->spill_fd, &fs) < 0) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot tell which file system holds the spill file %s: %s",
                    ps->spill_path, g_strerror(errno));
        return -1;
    }
    /* An explicit --store there is refused. The default ($TMPDIR) only
     * warns: a host (or test VM) booted from RAM has no disk to offer. */
    if (fs.f_type == TMPFS_MAGIC && path) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                    "the spill file %s is on tmpfs, whose pages can be swapped out to the "
                    "very device it backs: give --store a path on a disk file system",
                    ps->spill_path);
        return -1;
    }
    if (fs.f_type == TMPFS_MAGIC)
        g_warning("the spill file %s is on tmpfs, whose pages can be swapped out to the "
                  "very device it backs: set TMPDIR or --store to a disk file system",
                  ps->spill_path);
    if (ftruncate(ps->spill_fd, (off_t)ps->size) < 0) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot size the spill file %s to %" G_GUINT64_FORMAT " bytes: %s "
                    "(does its file system support sparse files of that size?)",
                    ps->spill_path, ps->size, g_strerror(errno));
        return -1;
    }
    return 0;
}

PageStore *page_store_new(uint64_t size, const char *spill_path, uint64_t mem_limit,
                          bool prealloc, GError **error)
{
    if (size == 0 || size % PAGE_SIZE_BYTES != 0) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "device size %" G_GUINT64_FORMAT " is not a positive multiple of 4096",
                    size);
        return NULL;
    }
    PageStore *ps = g_new0(PageStore, 1);
    ps->size = size;
    ps->nslots = size / PAGE_SIZE_BYTES;
    ps->spill_fd = -1;
    ps->pool_max = mem_limit / PAGE_SIZE_BYTES;
    ps->chunk = g_new0(unsigned char *, (ps->pool_max + POOL_CHUNK_PAGES - 1) / POOL_CHUNK_PAGES);
    ps->pool_free = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    g_mutex_init(&ps->pool_lock);
    for (unsigned i = 0; i < STRIPES; i++)
        g_mutex_init(&ps->stripe[i]);

    size_t table = (size_t)ps->nslots * sizeof(uint64_t);
    ps->slot = mmap(NULL, table, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (ps->slot == MAP_FAILED) {
        ps->slot = NULL;
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot map the slot table (%zu bytes for %" G_GUINT64_FORMAT
                    " slots): %s (use a smaller --size)", table, ps->nslots,
                    g_strerror(errno));
        page_store_free(ps);
        return NULL;
    }
    if (open_spill(ps, spill_path, error) < 0) {
        page_store_free(ps);
        return NULL;
    }
    if (prealloc && ps->pool_max)
        ps->prealloc_thread = g_thread_new("prealloc", prealloc_main, ps);
    else
        ps->prealloc_done = true;
    return ps;
}

void page_store_free(PageStore *ps)
{
    if (!ps)
        return;
    if (ps->prealloc_thread) {
        __atomic_store_n(&ps->prealloc_stop, true, __ATOMIC_RELEASE);
        g_thread_join(ps->prealloc_thread);
    }
    if (ps->slot)
        munmap(ps->slot, (size_t)ps->nslots * sizeof(uint64_t));
    for (uint64_t c = 0; c < ps->nchunks; c++)
        munmap(ps->chunk[c], (size_t)POOL_CHUNK_PAGES * PAGE_SIZE_BYTES);
    g_free(ps->chunk);
    g_array_unref(ps->pool_free);
    if (ps->spill_fd >= 0)
        close(ps->spill_fd);
    g_free(ps->spill_path);
    for (unsigned i = 0; i < STRIPES; i++)
        g_mutex_clear(&ps->stripe[i]);
    g_mutex_clear(&ps->pool_lock);
    g_free(ps);
}

static int spill_io(PageStore *ps, bool write, void *buf, size_t len, uint64_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = write ? pwrite(ps->spill_fd, (char *)buf + done, len - done, (off_t)(off + done))
                          : pread(ps->spill_fd, (char *)buf + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int err = n < 0 ? errno : EIO;
            uint64_t nth = __atomic_add_fetch(&ps->spill_failures, 1, __ATOMIC_RELAXED);
            if (nth > 8 && nth % 4096 != 0)
                return err;
            /* A full disk fails every write: log the first few, then a sample. */
            g_warning("page store: %s of the spill file %s at offset %" G_GUINT64_FORMAT
                      " failed: %s (failure %" G_GUINT64_FORMAT "%s)",
                      write ? "write" : "read", ps->spill_path, off + done, g_strerror(err),
                      nth, write ? "; the slot keeps what it had: free space there or give "
                                   "--store another file system" : "");
            return err;
        }
        done += (size_t)n;
    }
    return 0;
}

/* Give the spill file's space for slots [first, first+n) back; failure
 * only costs disk space. */
static void punch_spill(PageStore *ps, uint64_t first, uint64_t n)
{
    if (fallocate(ps->spill_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)(first << PAGE_SHIFT_BITS), (off_t)(n << PAGE_SHIFT_BITS)) < 0 &&
        errno != EOPNOTSUPP)
        g_debug("page store: punching slots %" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT
                " out of %s: %s", first, n, ps->spill_path, g_strerror(errno));
}

/* Slot s becomes empty; a spilled page's space is left for the caller to
 * punch. Caller holds its lock. */
static void slot_forget(PageStore *ps, uint64_t s)
{
    uint64_t e = ps->slot[s];
    switch (kind_of(e)) {
    case SLOT_RAM:
        pool_release(ps, payload_of(e));
        __atomic_sub_fetch(&ps->n_ram, 1, __ATOMIC_RELAXED);
        break;
    case SLOT_FILE:
        __atomic_sub_fetch(&ps->n_file, 1, __ATOMIC_RELAXED);
        break;
    case SLOT_REMOTE:
        __atomic_sub_fetch(&ps->n_remote, 1, __ATOMIC_RELAXED);
        break;
    case SLOT_MARKER:
        __atomic_sub_fetch(&ps->n_marker, 1, __ATOMIC_RELAXED);
        break;
    case SLOT_LANDED:
        __atomic_sub_fetch(&ps->n_landed, 1, __ATOMIC_RELAXED);
        break;
    case SLOT_EMPTY:
        break;
    }
    SLOT_SET(ps, s, 0);
}

/* Frees whatever slot `s` holds and leaves it EMPTY. Caller holds its lock. */
static void slot_clear(PageStore *ps, uint64_t s)
{
    if (kind_of(ps->slot[s]) == SLOT_FILE)
        punch_spill(ps, s, 1);
    slot_forget(ps, s);
}

static bool page_is_zero(const unsigned char *p)
{
    static const unsigned char zero[64];
    for (unsigned i = 0; i < PAGE_SIZE_BYTES; i += sizeof zero)
        if (memcmp(p + i, zero, sizeof zero) != 0)
            return false;
    return true;
}

#define MARKER_INDEX_MASK ((UINT64_C(1) << SWAPSTUB_MARKER_INDEX_BITS) - 1)

/* A marker written by swapstub arm: remember which one, store nothing. */
static bool slot_store_marker(PageStore *ps, uint64_t s, const unsigned char *page)
{
    uint64_t cookie, index, origin;
    if (!__atomic_load_n(&ps->markers_on, __ATOMIC_ACQUIRE) ||
        !swapstub_marker_parse(page, &cookie, &index, &origin) ||
        origin != SWAPSTUB_ORIGIN_WRITTEN || index > MARKER_INDEX_MASK ||
        cookie != __atomic_load_n(&ps->marker_cookie, __ATOMIC_RELAXED))
        return false;
    slot_clear(ps, s);
    SLOT_SET(ps, s, make_entry(SLOT_MARKER, index));
    __atomic_add_fetch(&ps->n_marker, 1, __ATOMIC_RELAXED);
    return true;
}

/* Store a whole page into slot s, whatever it held. Caller holds its lock.
 * The old entry is replaced only once the new copy is in place: a slot
 * whose page cannot be stored (pool full and the spill write failing, e.g.
 * a full disk) keeps what it had, so a remote page stays remote and is
 * never read back as zeros. */
static int slot_store(PageStore *ps, uint64_t s, const unsigned char *page)
{
    uint64_t e = ps->slot[s];
    if (page_is_zero(page)) {
        slot_clear(ps, s);
        return 0;
    }
    if (slot_store_marker(ps, s, page))
        return 0;
    if (kind_of(e) == SLOT_RAM) {
        memcpy(pool_page(ps, payload_of(e)), page, PAGE_SIZE_BYTES);
        return 0;
    }
    /* A failed overwrite of a spilled page leaves it torn, but only the
     * kernel overwrites a slot, and after a failed swap write it keeps the
     * page in memory and writes it again: it never reads the torn copy. */
    if (kind_of(e) == SLOT_FILE)
        return spill_io(ps, true, (void *)page, PAGE_SIZE_BYTES, s << PAGE_SHIFT_BITS);
    uint64_t idx = pool_alloc(ps);
    if (idx != UINT64_MAX) {
        memcpy(pool_page(ps, idx), page, PAGE_SIZE_BYTES);
        slot_clear(ps, s);
        SLOT_SET(ps, s, make_entry(SLOT_RAM, idx));
        __atomic_add_fetch(&ps->n_ram, 1, __ATOMIC_RELAXED);
        return 0;
    }
    int err = spill_io(ps, true, (void *)page, PAGE_SIZE_BYTES, s << PAGE_SHIFT_BITS);
    if (err)
        return err;
    slot_clear(ps, s);
    SLOT_SET(ps, s, make_entry(SLOT_FILE, 0));
    __atomic_add_fetch(&ps->n_file, 1, __ATOMIC_RELAXED);
    return 0;
}

/* Copy [in, in+len) of local slot s into dst. Caller holds its lock. */
static int slot_load(PageStore *ps, uint64_t s, unsigned in, unsigned len, unsigned char *dst)
{
    uint64_t e = ps->slot[s];
    switch (kind_of(e)) {
    case SLOT_EMPTY:
        memset(dst, 0, len);
        return 0;
    case SLOT_RAM:
        memcpy(dst, pool_page(ps, payload_of(e)) + in, len);
        return 0;
    case SLOT_FILE:
        return spill_io(ps, false, dst, len, (s << PAGE_SHIFT_BITS) + in);
    case SLOT_MARKER: {
        unsigned char page[PAGE_SIZE_BYTES];
        __atomic_add_fetch(&ps->n_marker_reads, 1, __ATOMIC_RELAXED);
        swapstub_marker_fill(page, __atomic_load_n(&ps->marker_cookie, __ATOMIC_RELAXED),
                             payload_of(e), SWAPSTUB_ORIGIN_DEVICE);
        memcpy(dst, page + in, len);
        return 0;
    }
    case SLOT_REMOTE:
    case SLOT_LANDED:
        break;
    }
    g_assert_not_reached();  /* callers resolve REMOTE and LANDED slots first */
}

/* Slot s is REMOTE: fetch it (without the lock), install it if the slot is
 * still the same remote page, and return with the lock held again. The
 * caller re-examines the slot: a write may have got there first. A page
 * that arrived but cannot be stored (full disk) is left in page_out with
 * *served set, and its slot stays remote; so is a page handed over in
 * landing mode. */
static int resolve_remote(PageStore *ps, uint64_t s, GMutex *lock, unsigned char *page_out,
                          bool *served)
{
    uint64_t e = ps->slot[s];
    unsigned export_id;
    uint64_t page;
    remote_ref(e, &export_id, &page);
    if (!ps->fetch) {
        g_warning("page store: slot %" G_GUINT64_FORMAT " is mapped to the source but no "
                  "source is connected", s);
        return EIO;
    }
    g_mutex_unlock(lock);
    int err = ps->fetch(ps->fetch_opaque, export_id, page, page_out);
    g_mutex_lock(lock);
    /* Whatever the fetch says, a slot that changed meanwhile (streamed in,
     * or written) is the caller's answer now: re-examine it. */
    if (ps->slot[s] != e)
        return 0;
    if (err)
        return err;
    /* Landing: the kernel keeps this page now; a zero page costs nothing to
     * keep, and then is never fetched again. */
    if (__atomic_load_n(&ps->landing, __ATOMIC_RELAXED) && !page_is_zero(page_out)) {
        if (kind_of(e) == SLOT_REMOTE) {
            __atomic_sub_fetch(&ps->n_remote, 1, __ATOMIC_RELAXED);
            __atomic_add_fetch(&ps->n_landed, 1, __ATOMIC_RELAXED);
            SLOT_SET(ps, s, make_entry(SLOT_LANDED, payload_of(e)));
        }
        *served = true;
        return 0;
    }
    if (slot_store(ps, s, page_out) != 0)
        *served = true;
    return 0;
}

/* [in, in+len) of slot s into dst, fetching a remote slot first. `page` is
 * a page of scratch the fetch lands in (dst itself for a whole-page read:
 * then a page handed over as it arrived costs no copy here). Caller holds
 * its lock. */
static int slot_read(PageStore *ps, uint64_t s, GMutex *lock, unsigned in, unsigned len,
                     unsigned char *dst, unsigned char *page)
{
    bool served = false;
    int err = 0;
    while (!err && !served && slot_kind_on_source(kind_of(ps->slot[s])))
        err = resolve_remote(ps, s, lock, page, &served);
    if (err)
        return err;
    if (served) {
        if (dst != page + in)  /* a partial write merges in `page` itself */
            memcpy(dst, page + in, len);
        return 0;
    }
    return slot_load(ps, s, in, len, dst);
}

int page_store_read(PageStore *ps, void *buf, uint32_t len, uint64_t off)
{
    unsigned char *out = buf;
    unsigned char page[PAGE_SIZE_BYTES];
    if (len)
        prefetch_window(ps, off >> PAGE_SHIFT_BITS, (off + len - 1) >> PAGE_SHIFT_BITS);
    while (len > 0) {
        uint64_t s = off >> PAGE_SHIFT_BITS;
        unsigned in = (unsigned)(off & (PAGE_SIZE_BYTES - 1));
        unsigned n = MIN(len, PAGE_SIZE_BYTES - in);
        GMutex *lock = lock_for(ps, s);
        g_mutex_lock(lock);
        int err = slot_read(ps, s, lock, in, n, out, n == PAGE_SIZE_BYTES ? out : page);
        g_mutex_unlock(lock);
        if (err)
            return err;
        out += n;
        off += n;
        len -= n;
    }
    return 0;
}

int page_store_write(PageStore *ps, const void *buf, uint32_t len, uint64_t off)
{
    const unsigned char *src = buf;
    unsigned char page[PAGE_SIZE_BYTES];
    while (len > 0) {
        uint64_t s = off >> PAGE_SHIFT_BITS;
        unsigned in = (unsigned)(off & (PAGE_SIZE_BYTES - 1));
        unsigned n = MIN(len, PAGE_SIZE_BYTES - in);
        GMutex *lock = lock_for(ps, s);
        int err = 0;
        g_mutex_lock(lock);
        if (n == PAGE_SIZE_BYTES) {
            err = slot_store(ps, s, src);
        } else {
            /* A partial page merges with what the slot holds, which for a
             * remote slot means fetching it first. */
            err = slot_read(ps, s, lock, 0, PAGE_SIZE_BYTES, page, page);
            if (!err) {
                memcpy(page + in, src, n);
                err = slot_store(ps, s, page);
            }
        }
        g_mutex_unlock(lock);
        if (err)
            return err;
        src += n;
        off += n;
        len -= n;
    }
    return 0;
}

static void lock_all_stripes(PageStore *ps)
{
    for (unsigned i = 0; i < STRIPES; i++)
        g_mutex_lock(&ps->stripe[i]);
}

static void unlock_all_stripes(PageStore *ps)
{
    for (unsigned i = STRIPES; i-- > 0;)
        g_mutex_unlock(&ps->stripe[i]);
}

/* Whole pages [first, first+n), n <= STRIPES, become empty. Every stripe
 * lock is held (in ascending order; no other path holds two), so no write
 * can land on one of these slots between its clear and the punch that
 * frees its spill space, and a run of spilled slots is punched in one
 * call: page by page, the kernel's 2 MiB swap discards took ~190 ms each
 * and swapoff waited minutes for them. */
static void discard_pages(PageStore *ps, uint64_t first, uint64_t n)
{
    lock_all_stripes(ps);
    uint64_t run_first = 0, run = 0;
    for (uint64_t s = first; s < first + n; s++) {
        if (kind_of(ps->slot[s]) == SLOT_FILE) {
            if (!run)
                run_first = s;
            run++;
        } else if (run) {
            punch_spill(ps, run_first, run);
            run = 0;
        }
        slot_forget(ps, s);
    }
    if (run)
        punch_spill(ps, run_first, run);
    unlock_all_stripes(ps);
}

int page_store_discard(PageStore *ps, uint32_t len, uint64_t off)
{
    static const unsigned char zero[PAGE_SIZE_BYTES];
    while (len > 0) {
        unsigned in = (unsigned)(off & (PAGE_SIZE_BYTES - 1));
        if (in == 0 && len >= PAGE_SIZE_BYTES) {
            uint64_t n = MIN((uint64_t)(len >> PAGE_SHIFT_BITS), (uint64_t)STRIPES);
            discard_pages(ps, off >> PAGE_SHIFT_BITS, n);
            off += n << PAGE_SHIFT_BITS;
            len -= (uint32_t)(n << PAGE_SHIFT_BITS);
            continue;
        }
        unsigned n = MIN(len, PAGE_SIZE_BYTES - in);
        int err = page_store_write(ps, zero, n, off);
        if (err)
            return err;
        off += n;
        len -= n;
    }
    return 0;
}

void page_store_extents(PageStore *ps, uint32_t len, uint64_t off, GArray *extents)
{
    uint64_t end = off + len;
    while (off < end) {
        uint64_t s = off >> PAGE_SHIFT_BITS;
        uint64_t next = MIN(end, (s + 1) << PAGE_SHIFT_BITS);
        uint32_t flags = __atomic_load_n(&ps->slot[s], __ATOMIC_RELAXED) == 0
                             ? (NBD_STATE_HOLE | NBD_STATE_ZERO) : 0;
        extent_append(extents, (uint32_t)(next - off), flags);
        off = next;
    }
}

void page_store_counts(PageStore *ps, PageStoreCounts *out)
{
    out->slots = ps->nslots;
    out->ram_pages = __atomic_load_n(&ps->n_ram, __ATOMIC_RELAXED);
    out->file_pages = __atomic_load_n(&ps->n_file, __ATOMIC_RELAXED);
    out->remote_pages = __atomic_load_n(&ps->n_remote, __ATOMIC_RELAXED);
    out->landed_pages = __atomic_load_n(&ps->n_landed, __ATOMIC_RELAXED);
    out->marker_pages = __atomic_load_n(&ps->n_marker, __ATOMIC_RELAXED);
    out->marker_reads = __atomic_load_n(&ps->n_marker_reads, __ATOMIC_RELAXED);
    g_mutex_lock(&ps->pool_lock);
    out->pool_pages = MIN(ps->nchunks * POOL_CHUNK_PAGES, ps->pool_max);
    g_mutex_unlock(&ps->pool_lock);
    out->prealloc_done = __atomic_load_n(&ps->prealloc_done, __ATOMIC_ACQUIRE);
}

void page_store_expect_markers(PageStore *ps, bool on, uint64_t cookie)
{
    __atomic_store_n(&ps->marker_cookie, cookie, __ATOMIC_RELAXED);
    __atomic_store_n(&ps->markers_on, on, __ATOMIC_RELEASE);
}

void page_store_set_fetcher(PageStore *ps, PageFetchFn fetch, PagePrefetchFn prefetch,
                            unsigned cluster, void *opaque)
{
    ps->fetch = fetch;
    ps->prefetch = prefetch;
    ps->cluster = cluster ? cluster : 1;
    ps->fetch_opaque = opaque;
}

static void remote_ref(uint64_t e, unsigned *export_id, uint64_t *page)
{
    *export_id = (unsigned)(payload_of(e) >> REMOTE_EXPORT_SHIFT);
    *page = payload_of(e) & REMOTE_PAGE_MASK;
}

/* A read about to fault: ask for every remote slot of it, and of the
 * readahead window around it, before waiting for the first one. A small
 * read goes to the front of the queue. */
static void prefetch_window(PageStore *ps, uint64_t first, uint64_t last)
{
    bool faults = false;
    for (uint64_t s = first; s <= last && !faults; s++)
        faults = slot_kind_on_source(kind_of(__atomic_load_n(&ps->slot[s], __ATOMIC_RELAXED)));
    if (!faults || !ps->prefetch)
        return;
    bool urgent = last - first < URGENT_READ_PAGES;
    uint64_t lo = first - first % ps->cluster;
    uint64_t hi = MIN(ps->nslots - 1, last - last % ps->cluster + ps->cluster - 1);
    g_autofree RemotePage *want = g_new(RemotePage, hi - lo + 1);
    size_t n = 0;
    for (uint64_t s = lo; s <= hi; s++) {
        uint64_t e = __atomic_load_n(&ps->slot[s], __ATOMIC_RELAXED);
        /* A landed neighbour is the kernel's already: it will not read it. */
        if (kind_of(e) != SLOT_REMOTE && !(kind_of(e) == SLOT_LANDED && s >= first && s <= last))
            continue;
        remote_ref(e, &want[n].export_id, &want[n].page);
        n++;
    }
    ps->prefetch(ps->fetch_opaque, want, n, urgent);
}

/* Slots per hold of every stripe lock: long enough that the 256 lock
 * operations are nothing per slot, short enough (~0.1 ms) that a reader
 * waiting on a stripe is not held up. */
#define MAP_BATCH_SLOTS 16384

/* One batch, all or nothing: returns false, mapping nothing, if a slot
 * holds data. */
static bool map_batch(PageStore *ps, uint64_t slot, uint64_t n, unsigned export_id,
                      uint64_t page)
{
    uint64_t was[SLOT_LANDED + 1] = { 0 };
    lock_all_stripes(ps);
    for (uint64_t i = 0; i < n; i++) {
        SlotKind k = kind_of(ps->slot[slot + i]);
        if (k == SLOT_RAM || k == SLOT_FILE) {
            unlock_all_stripes(ps);
            return false;
        }
        was[k]++;
    }
    for (uint64_t i = 0; i < n; i++)
        SLOT_SET(ps, slot + i, make_entry(SLOT_REMOTE, remote_payload(export_id, page + i)));
    __atomic_add_fetch(&ps->n_remote, n - was[SLOT_REMOTE], __ATOMIC_RELAXED);
    __atomic_sub_fetch(&ps->n_marker, was[SLOT_MARKER], __ATOMIC_RELAXED);
    __atomic_sub_fetch(&ps->n_landed, was[SLOT_LANDED], __ATOMIC_RELAXED);
    unlock_all_stripes(ps);
    return true;
}

uint64_t page_store_map_remote(PageStore *ps, uint64_t slot, uint64_t n, unsigned export_id,
                               uint64_t page)
{
    if (slot >= ps->nslots || n > ps->nslots - slot)
        return 0;
    uint64_t done = 0;
    while (done < n) {
        uint64_t k = MIN(n - done, (uint64_t)MAP_BATCH_SLOTS);
        if (!map_batch(ps, slot + done, k, export_id, page + done))
            break;
        done += k;
    }
    return done;
}

void page_store_set_landing(PageStore *ps, bool on)
{
    __atomic_store_n(&ps->landing, on, __ATOMIC_RELAXED);
}

bool page_store_landing(PageStore *ps)
{
    return __atomic_load_n(&ps->landing, __ATOMIC_RELAXED);
}

uint64_t page_store_release_landed(PageStore *ps)
{
    uint64_t n = 0;
    for (uint64_t s = 0; s < ps->nslots; s++) {
        if (kind_of(__atomic_load_n(&ps->slot[s], __ATOMIC_RELAXED)) != SLOT_LANDED)
            continue;
        GMutex *lock = lock_for(ps, s);
        g_mutex_lock(lock);
        if (kind_of(ps->slot[s]) == SLOT_LANDED) {
            slot_forget(ps, s);
            n++;
        }
        g_mutex_unlock(lock);
    }
    return n;
}

SlotKind page_store_slot_kind(PageStore *ps, uint64_t slot)
{
    return kind_of(__atomic_load_n(&ps->slot[slot], __ATOMIC_RELAXED));
}

void page_store_slot_letters(PageStore *ps, uint64_t first, uint64_t n, char *out)
{
    static const char letter[] = { [SLOT_EMPTY] = 'E', [SLOT_RAM] = 'L', [SLOT_FILE] = 'L',
                                   [SLOT_REMOTE] = 'R', [SLOT_MARKER] = 'M',
                                   [SLOT_LANDED] = 'D' };
    for (uint64_t i = 0; i < n; i++)
        out[i] = letter[kind_of(__atomic_load_n(&ps->slot[first + i], __ATOMIC_RELAXED))];
}

bool page_store_fill_remote(PageStore *ps, uint64_t slot, unsigned export_id, uint64_t page,
                            const void *data)
{
    bool done = false;
    GMutex *lock = lock_for(ps, slot);
    g_mutex_lock(lock);
    if (ps->slot[slot] == make_entry(SLOT_REMOTE, remote_payload(export_id, page)))
        done = slot_store(ps, slot, data) == 0;
    g_mutex_unlock(lock);
    return done;
}
