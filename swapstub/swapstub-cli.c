/* swapstub: arm a region of a process (typically a QEMU waiting for an
 * incoming migration) as swapped out to swapcopy's device, show what it
 * is doing, and convert it back when the migration is done; and swapon a
 * device as stub-only (SWAP_FLAG_STUB), which util-linux cannot. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/swap.h>
#include <unistd.h>

#include "swapstub.h"

typedef struct {
    gint pid;
    char *addr, *len, *control, *device, *export_name;
    gint64 export_page;
    gboolean no_wait;
    gboolean quiet;
    gboolean map_later;
    gboolean wait_go;
    char *marker_reads;
    gint swap_type;             /* -1: look it up */
    gint evict_seconds;
    gboolean stub, discard_pages;
    gint priority;
} Args;

/* swapon(2) flags of include/linux/swap.h that glibc does not define. */
#ifndef SWAP_FLAG_DISCARD_PAGES
#define SWAP_FLAG_DISCARD_PAGES 0x40000
#endif
#define SWAP_FLAG_STUB 0x80000          /* mm-patch-madvise */

static bool parse_u64_arg(const char *what, const char *s, uint64_t *out, GError **error)
{
    char *end = NULL;
    errno = 0;
    *out = s ? g_ascii_strtoull(s, &end, 0) : 0;
    if (!s || errno || !end || *end) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "%s: '%s' is not a number (decimal, or hex with 0x)", what, s ? s : "");
        return false;
    }
    return true;
}

static bool build_config(const Args *a, SwapStubConfig *cfg, bool need_export, GError **error)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->pid = a->pid;
    cfg->control = a->control;
    cfg->device = a->device;
    cfg->export_name = a->export_name ? a->export_name : "-";
    cfg->export_page = (uint64_t)a->export_page;
    cfg->swap_type_known = a->swap_type >= 0;
    cfg->swap_type = cfg->swap_type_known ? (unsigned)a->swap_type : 0;
    cfg->evict_seconds = a->evict_seconds > 0 ? (unsigned)a->evict_seconds : 0;
    if (!a->control || !a->device || !a->addr || !a->len || (need_export && !a->export_name)) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                    "needs --addr, --len, --control and --device%s (see --help)",
                    need_export ? " and --export" : "");
        return false;
    }
    return parse_u64_arg("--addr", a->addr, &cfg->addr, error) &&
           parse_u64_arg("--len", a->len, &cfg->len, error);
}

static void print_progress(void *opaque, uint64_t done, uint64_t total, double mib_s,
                           double eta_s)
{
    if (*(gboolean *)opaque)
        return;
    fprintf(stderr, "\rswapstub: converted %" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT
            " pages (%.0f%%), %.1f MiB/s, ETA %.1f s   ", done, total,
            100.0 * (double)done / (double)total, mib_s, eta_s);
    if (done == total)
        fputc('\n', stderr);
}

static int cmd_arm(const Args *a, GError **error)
{
    SwapStubConfig cfg;
    SwapStubArmReport r;
    if (!build_config(a, &cfg, true, error))
        return 1;
    cfg.map_later = a->map_later;
    SwapStub *s = swapstub_arm(&cfg, &r, error);
    if (!s)
        return 1;
    printf("armed pages=%" G_GUINT64_FORMAT " map_runs=%" G_GUINT64_FORMAT " rounds=%u "
           "cached_after_first_pageout=%" G_GUINT64_FORMAT " method=%s seconds=%.3f "
           "prime_s=%.3f markers_s=%.3f pageout_s=%.3f evict_s=%.3f map_s=%.3f mapped=%s "
           "marker_reads=%" G_GUINT64_FORMAT " swap_type=%u\n",
           r.pages, r.map_runs, r.rounds, r.still_cached_first, r.method, r.seconds,
           r.prime_s, r.markers_s, r.pageout_s, r.evict_s, r.map_s,
           a->map_later ? "no" : "yes", r.marker_reads, r.swap_type);
    swapstub_free(s);
    return 0;
}

/* The second half of 'arm --map-later', once the source's export exists. */
static int cmd_map(const Args *a, GError **error)
{
    SwapStubConfig cfg;
    uint64_t reads;
    if (!build_config(a, &cfg, true, error))
        return 1;
    if (!a->marker_reads) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                    "needs --marker-reads N, as 'arm --map-later' printed it");
        return 1;
    }
    if (!parse_u64_arg("--marker-reads", a->marker_reads, &reads, error))
        return 1;
    SwapStub *s = swapstub_attach_armed(&cfg, reads, error);
    if (!s)
        return 1;
    if (a->wait_go) {
        /* Attached (the region read from pagemap) while the caller still
         * sets the source up: register only once told to. */
        printf("attached pages=%" G_GUINT64_FORMAT "\n", swapstub_pages(s));
        fflush(stdout);
        char line[16];
        if (!fgets(line, sizeof line, stdin) || strcmp(line, "go\n") != 0) {
            g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                        "--wait-go: standard input ended without 'go': nothing was mapped");
            swapstub_free(s);
            return 1;
        }
    }
    SwapStubArmReport r = { 0 };
    bool ok = swapstub_map(s, &r, error);
    if (ok) {
        printf("mapped pages=%" G_GUINT64_FORMAT " map_runs=%" G_GUINT64_FORMAT
               " seconds=%.3f\n", swapstub_pages(s), r.map_runs, r.map_s);
        /* The caller goes on at this line, not at this process's exit. */
        fflush(stdout);
    }
    swapstub_free(s);
    return ok ? 0 : 1;
}

/* The region the arguments name, taken hold of as it is now. */
static SwapStub *attach_region(const Args *a, SwapStubConfig *cfg, GError **error)
{
    return build_config(a, cfg, false, error) ? swapstub_attach(cfg, error) : NULL;
}

/* A region armed ahead whose migration will not happen. */
static int cmd_disarm(const Args *a, GError **error)
{
    SwapStubConfig cfg;
    SwapStub *s = attach_region(a, &cfg, error);
    if (!s)
        return 1;
    swapstub_disarm(s);
    int64_t left = swapstub_pages_on_device(s, error);
    swapstub_free(s);
    if (left < 0)
        return 1;
    if (left > 0) {
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                    "%" G_GINT64_FORMAT " pages of the region are still on %s after disarming",
                    left, cfg.device);
        return 1;
    }
    printf("disarmed: every page of the region is plain memory (zeros)\n");
    return 0;
}

static int cmd_finish(const Args *a, GError **error)
{
    SwapStubConfig cfg;
    SwapStub *s = attach_region(a, &cfg, error);
    if (!s)
        return 1;
    gboolean quiet = a->quiet;
    bool ok = swapstub_finish(s, !a->no_wait, print_progress, &quiet, error);
    if (ok)
        printf("finished pages=%" G_GUINT64_FORMAT "\n", swapstub_pages(s));
    swapstub_free(s);
    return ok ? 0 : 1;
}

static int cmd_status(const Args *a, GError **error)
{
    if (!a->control) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED, "status needs --control");
        return 1;
    }
    g_autofree char *st = swapstub_control(a->control, "status", error);
    if (!st)
        return 1;
    printf("daemon %s\n", st);
    if (a->addr && a->len && a->device) {
        SwapStubConfig cfg;
        if (!build_config(a, &cfg, false, error))
            return 1;
        SwapStub *s = swapstub_attach(&cfg, error);
        if (!s)
            return 1;
        int64_t on = swapstub_pages_on_device(s, error);
        if (on >= 0)
            printf("region pages=%" G_GUINT64_FORMAT " on_device=%" G_GINT64_FORMAT
                   " plain=%" G_GINT64_FORMAT "\n", swapstub_pages(s), on,
                   (int64_t)swapstub_pages(s) - on);
        swapstub_free(s);
        if (on < 0)
            return 1;
    }
    return 0;
}

/* swapon DEVICE [--stub] [--priority N] [--discard-pages]: what
 * `swapon -p N --discard=pages` does, plus SWAP_FLAG_STUB. */
static int cmd_swapon(const Args *a, const char *device, GError **error)
{
    int flags = 0;
    if (!device) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                    "needs the device: swapstub swapon [--stub] [--priority N] "
                    "[--discard-pages] DEVICE");
        return 1;
    }
    if (a->priority > 32767) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "--priority %d: swap priorities go from 0 to 32767", a->priority);
        return 1;
    }
    if (a->priority >= 0)
        flags |= SWAP_FLAG_PREFER | ((a->priority << SWAP_FLAG_PRIO_SHIFT) & SWAP_FLAG_PRIO_MASK);
    if (a->discard_pages)
        flags |= SWAP_FLAG_DISCARD | SWAP_FLAG_DISCARD_PAGES;
    if (a->stub) {
        if (!swapstub_kernel_has_madv_swapstub()) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_NOSYS,
                        "--stub: this kernel has no /sys/kernel/mm/swap/swapstub, so no "
                        "SWAP_FLAG_STUB: boot a kernel with mm-patch-madvise (make kernel), or "
                        "leave --stub out");
            return 1;
        }
        flags |= SWAP_FLAG_STUB;
    }
    if (swapon(device, flags) < 0) {
        int err = errno;
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err),
                    "swapon(%s, 0x%x%s) failed: %s (%s)", device, (unsigned)flags,
                    a->stub ? ", SWAP_FLAG_STUB" : "", g_strerror(err),
                    err == EBUSY ? "already swap, or in use: see /proc/swaps" :
                    err == EINVAL ? "no swap signature (run mkswap first), or flags this "
                                    "kernel does not know" :
                    err == EPERM ? "needs root (CAP_SYS_ADMIN)" : "see dmesg");
        return 1;
    }
    printf("swapon %s priority=%d stub=%s\n", device, a->priority, a->stub ? "yes" : "no");
    return 0;
}

int main(int argc, char **argv)
{
    Args a = { .priority = -1, .swap_type = -1 };
    GOptionEntry entries[] = {
        { "pid", 0, 0, G_OPTION_ARG_INT, &a.pid, "Process owning the region", "PID" },
        { "addr", 0, 0, G_OPTION_ARG_STRING, &a.addr, "Start address of the region", "ADDR" },
        { "len", 0, 0, G_OPTION_ARG_STRING, &a.len, "Length in bytes", "LEN" },
        { "control", 0, 0, G_OPTION_ARG_FILENAME, &a.control, "nbd-pagesrv control socket", "PATH" },
        { "device", 0, 0, G_OPTION_ARG_FILENAME, &a.device, "The swapcopy swap device", "DEV" },
        { "export", 0, 0, G_OPTION_ARG_STRING, &a.export_name,
          "Source export holding the region (e.g. mem)", "NAME" },
        { "export-page", 0, 0, G_OPTION_ARG_INT64, &a.export_page,
          "Export page of the region's first page (default 0)", "N" },
        { "no-wait", 0, 0, G_OPTION_ARG_NONE, &a.no_wait,
          "finish: do not wait for every page to be local first", NULL },
        { "quiet", 'q', 0, G_OPTION_ARG_NONE, &a.quiet, "No progress line", NULL },
        { "map-later", 0, 0, G_OPTION_ARG_NONE, &a.map_later,
          "arm: do not register the slots yet ('map' does, once the source exists)", NULL },
        { "wait-go", 0, 0, G_OPTION_ARG_NONE, &a.wait_go,
          "map: take hold of the region now, register it once a line 'go' comes on "
          "standard input (the caller starts the source meanwhile)", NULL },
        { "marker-reads", 0, 0, G_OPTION_ARG_STRING, &a.marker_reads,
          "map: the marker_reads= that 'arm --map-later' printed", "N" },
        { "swap-type", 0, 0, G_OPTION_ARG_INT, &a.swap_type,
          "map, disarm, finish, status: the device's swap type, as 'arm' printed it "
          "(swap_type=; else its line in /proc/swaps, wrong once a lower type was swapped "
          "off)", "N" },
        { "evict-seconds", 0, 0, G_OPTION_ARG_INT, &a.evict_seconds,
          "arm: time allowed to empty the swap cache (default 30)", "S" },
        { "stub", 0, 0, G_OPTION_ARG_NONE, &a.stub,
          "swapon: stub-only device (SWAP_FLAG_STUB, mm-patch-madvise)", NULL },
        { "priority", 0, 0, G_OPTION_ARG_INT, &a.priority, "swapon: priority (0-32767)", "N" },
        { "discard-pages", 0, 0, G_OPTION_ARG_NONE, &a.discard_pages,
          "swapon: discard freed slots (as swapon --discard=pages)", NULL },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_autoptr(GError) error = NULL;
    g_autoptr(GOptionContext) ctx =
        g_option_context_new("arm|map|disarm|finish|status|swapon [DEVICE] - swapcopy's region tool");
    g_option_context_add_main_entries(ctx, entries, NULL);
    g_option_context_set_description(ctx,
        "  arm     set the region up as swapped out to DEV, backed by EXPORT on the source\n"
        "          (--map-later: ahead of the migration, before the source's export exists)\n"
        "  map     register a region armed with --map-later (--marker-reads from its output)\n"
        "  disarm  undo an arm that will not be used: the region becomes zeros\n"
        "  finish  wait until every page is local, then convert the region back\n"
        "  status  show the daemon's progress (and the region's, given --addr/--len/--device)\n"
        "  swapon  swapon DEVICE, with --stub as a stub-only device (arming with\n"
        "          MADV_SWAPSTUB), --priority N, --discard-pages\n"
        "Documentation: docs/swapstub.md");
    bool parsed = g_option_context_parse(ctx, &argc, &argv, &error);
    bool is_swapon = parsed && argc >= 2 && strcmp(argv[1], "swapon") == 0;
    if (!parsed || argc != (is_swapon ? 3 : 2)) {
        fprintf(stderr, "swapstub: %s\n", error ? error->message
                : is_swapon ? "swapon takes one device: swapstub swapon [--stub] DEVICE"
                            : "give one command: arm, map, disarm, finish, status or swapon DEVICE");
        return 2;
    }
    int rc;
    if (is_swapon)
        rc = cmd_swapon(&a, argv[2], &error);
    else if (strcmp(argv[1], "arm") == 0)
        rc = cmd_arm(&a, &error);
    else if (strcmp(argv[1], "map") == 0)
        rc = cmd_map(&a, &error);
    else if (strcmp(argv[1], "disarm") == 0)
        rc = cmd_disarm(&a, &error);
    else if (strcmp(argv[1], "finish") == 0)
        rc = cmd_finish(&a, &error);
    else if (strcmp(argv[1], "status") == 0)
        rc = cmd_status(&a, &error);
    else {
        fprintf(stderr, "swapstub: unknown command '%s' (arm, map, disarm, finish, status, swapon)\n",
                argv[1]);
        return 2;
    }
    if (rc)
        fprintf(stderr, "swapstub %s: %s\n", argv[1], error ? error->message : "failed");
    g_free(a.addr); g_free(a.len); g_free(a.control); g_free(a.device); g_free(a.export_name);
    g_free(a.marker_reads);
    return rc;
}
