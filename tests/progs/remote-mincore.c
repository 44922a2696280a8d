/* remote-mincore: ss_remote_mincore() against a child that waits in a
 * system call, as a stock QEMU waits for -incoming.
 *
 *   remote-mincore [--rounds N] [--wait ppoll|nanosleep|busy]
 *   remote-mincore --pid PID
 *
 * The child maps 64 MiB, writes every third page and waits (in ppoll on a
 * pipe, in nanosleep loops, or spinning in user space). The parent reads
 * the child's mincore N times and checks that exactly the written pages
 * are resident, then tells the child to check its memory and how its wait
 * went: ppoll must not have returned early with an error, and every page
 * must still hold what was written. Prints "OK rounds=N" and exits 0, or
 * says what was wrong and exits 1. With --pid, asks about one page of
 * that process's stack instead: prints "OK" or the error, exits 0 or 1. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <glib.h>

#include "remote-syscall.h"
#include "target.h"

#define PAGES 16384u

static volatile sig_atomic_t got_usr1;

static void on_usr1(int sig)
{
    (void)sig;
    got_usr1 = 1;
}

/* The child: 0 if its memory and its waiting came through untouched. */
static int child(unsigned char *m, int rd, int wr, const char *how)
{
    for (unsigned i = 0; i < PAGES; i += 3)
        m[(size_t)i * 4096 + 11] = (unsigned char)(i % 251 + 1);
    if (write(wr, "R", 1) != 1)
        return 10;
    int bad_returns = 0;
    for (;;) {
        if (!strcmp(how, "ppoll")) {
            struct pollfd p = { rd, POLLIN, 0 };
            int n = ppoll(&p, 1, NULL, NULL);
            if (n < 0 && errno != EINTR) {
                fprintf(stderr, "child: ppoll failed: %s\n", strerror(errno));
                bad_returns++;
            }
            if (n == 0)
                bad_returns++;        /* no timeout was given */
            if (n > 0)
                break;
        } else if (!strcmp(how, "nanosleep")) {
            struct timespec ts = { 0, 2000000 };
            if (nanosleep(&ts, NULL) < 0 && errno != EINTR)
                bad_returns++;
            if (got_usr1)
                break;
        } else if (got_usr1) {
            break;
        }
    }
    for (unsigned i = 0; i < PAGES; i++) {
        unsigned char want = i % 3 == 0 ? (unsigned char)(i % 251 + 1) : 0;
        if (m[(size_t)i * 4096 + 11] != want) {
            fprintf(stderr, "child: page %u holds %u, not %u\n", i, m[(size_t)i * 4096 + 11],
                    want);
            return 11;
        }
    }
    return bad_returns ? 12 : 0;
}

/* One page of another process's stack. */
static int ask_other(pid_t pid)
{
    g_autoptr(GError) error = NULL;
    g_auto(GStrv) lines = target_maps_lines(pid, &error);
    unsigned long long lo = 0;
    for (char **l = lines; l && *l; l++)
        if (g_str_has_suffix(*l, "[stack]"))
            sscanf(*l, "%llx", &lo);
    unsigned char vec[1];
    if (!lo && !error)
        g_set_error(&error, G_FILE_ERROR, G_FILE_ERROR_NOENT, "process %d has no [stack]",
                    (int)pid);
    if (error || !ss_remote_mincore(pid, lo, 1, vec, &error)) {
        fprintf(stderr, "remote-mincore: %s\n", error->message);
        return 1;
    }
    printf("OK\n");
    return 0;
}

int main(int argc, char **argv)
{
    gint rounds = 100, other = 0;
    gchar *how = NULL;
    GOptionEntry entries[] = {
        { "pid", 0, 0, G_OPTION_ARG_INT, &other, "ask about another process", "PID" },
        { "rounds", 0, 0, G_OPTION_ARG_INT, &rounds, "mincore calls", "N" },
        { "wait", 0, 0, G_OPTION_ARG_STRING, &how, "ppoll, nanosleep or busy", "HOW" },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_autoptr(GError) error = NULL;
    g_autoptr(GOptionContext) ctx = g_option_context_new("- mincore run inside a child");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
        fprintf(stderr, "remote-mincore: %s\n", error->message);
        return 2;
    }
    if (other)
        return ask_other((pid_t)other);
    if (!how)
        how = g_strdup("ppoll");
    unsigned char *m = mmap(NULL, (size_t)PAGES * 4096, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int to_child[2], from_child[2];
    if (m == MAP_FAILED || pipe(to_child) < 0 || pipe(from_child) < 0) {
        fprintf(stderr, "remote-mincore: mmap or pipe failed: %s\n", strerror(errno));
        return 2;
    }
    signal(SIGUSR1, on_usr1);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "remote-mincore: fork failed: %s\n", strerror(errno));
        return 2;
    }
    if (pid == 0)
        _exit(child(m, to_child[0], from_child[1], how));
    char c;
    if (read(from_child[0], &c, 1) != 1) {
        fprintf(stderr, "remote-mincore: the child did not start\n");
        return 2;
    }
    g_autofree unsigned char *vec = g_malloc(PAGES);
    int failed = 0;
    for (int r = 0; r < rounds && !failed; r++) {
        if (!ss_remote_mincore(pid, (uint64_t)(uintptr_t)m, PAGES, vec, &error)) {
            fprintf(stderr, "remote-mincore: round %d: %s\n", r, error->message);
            failed = 1;
            break;
        }
        for (unsigned i = 0; i < PAGES; i++) {
            if ((vec[i] & 1) != (i % 3 == 0)) {
                fprintf(stderr, "remote-mincore: round %d: page %u %s resident\n", r, i,
                        vec[i] & 1 ? "is" : "is not");
                failed = 1;
                break;
            }
        }
        g_usleep(1000);
    }
    if (write(to_child[1], "G", 1) != 1 || kill(pid, SIGUSR1) < 0) {
        fprintf(stderr, "remote-mincore: cannot wake the child: %s\n", strerror(errno));
        return 2;
    }
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "remote-mincore: the child ended badly (status 0x%x)\n", st);
        return 1;
    }
    if (failed)
        return 1;
    printf("OK rounds=%d\n", rounds);
    g_free(how);
    return 0;
}
