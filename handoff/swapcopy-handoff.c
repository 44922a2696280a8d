/* swapcopy-handoff: the first thing `scripts/swapcopy-migrate` runs.
 *
 * A destination prepared ahead (`swapcopy-migrate --prepare-only`) has an
 * agent waiting on STATE_DIR/NAME/agent.sock with everything loaded
 * (scripts/swapcopy_agent.py). This program hands the command line to it,
 * with this process's standard output and error, and waits for its exit
 * status: the operator's command reaches the agent in a few milliseconds,
 * where starting Python alone takes ~20 ms on these hosts, on the way from
 * `migrate` to the switch. With no agent there, or if it declines the
 * command, it runs swapcopy-migrate's Python itself (exec).
 *
 *   swapcopy-handoff PYTHON MAIN_SCRIPT [swapcopy-migrate arguments...]
 * runs, if no agent takes the command, PYTHON -S MAIN_SCRIPT [arguments...].
 *
 * The protocol (one SOCK_SEQPACKET message each way):
 *   request  "swapcopy-migrate/1" NUL cwd NUL arg NUL arg ...,
 *            with descriptors 1 and 2 (SCM_RIGHTS)
 *   answer   "accepted" or "decline"; then, once it is done, "exit N"; the
 *            connection closes when the agent has exited
 *   from us  "interrupt", on SIGINT/SIGTERM: the agent stops the migration
 *            as Ctrl-C would have stopped swapcopy-migrate. On SIGHUP (the
 *            terminal went) we just go: the agent cancels a migration that
 *            has not switched yet, and finishes one that has. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define PROTOCOL "swapcopy-migrate/1"
#define SOCKET_NAME "agent.sock"
#define REQUEST_MAX 65536

/* The connection the signal handler writes to; -1 before there is one. */
static volatile sig_atomic_t agent_fd = -1;

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        _exit(128 + SIGHUP);
    int saved = errno;
    if (agent_fd >= 0)
        (void)send(agent_fd, "interrupt", 9, MSG_NOSIGNAL);
    errno = saved;
}

/* The Python implementation, which does everything an agent does not:
 * PYTHON -S MAIN_SCRIPT ARGS (-S: it needs no site-packages). */
static void run_python(int argc, char **argv)
{
    char **py = calloc((size_t)argc + 1, sizeof *py);
    if (!py) {
        fprintf(stderr, "swapcopy-migrate: out of memory starting %s\n", argv[1]);
        exit(1);
    }
    py[0] = argv[1];
    py[1] = "-S";
    for (int i = 2; i < argc; i++)
        py[i] = argv[i];
    execv(argv[1], py);
    fprintf(stderr, "swapcopy-migrate: cannot run %s: %s (install python3: make deps)\n",
            argv[1], strerror(errno));
    exit(127);
}

/* Whether this command line names an agent's migration; sets its state
 * directory (STATE_DIR/NAME). swapcopy-migrate's parser takes no
 * abbreviated options, so --name V and --name=V are the only spellings. */
static int agent_dir(int argc, char **argv, char *dir, size_t size)
{
    /* Not a migration into a prepared destination: the source host's
     * side, preparing, undoing, or asking for help. */
    static const char *const not_handed[] = { "--prepare-only", "--unprepare", "--role=source",
                                              "-h", "--help" };
    const char *name = "swapcopy", *state_dir = "/run/swapcopy";
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        for (size_t k = 0; k < sizeof not_handed / sizeof not_handed[0]; k++)
            if (strcmp(a, not_handed[k]) == 0)
                return 0;
        if (strcmp(a, "--role") == 0 && i + 1 < argc && strcmp(argv[i + 1], "source") == 0)
            return 0;
        if (strcmp(a, "--name") == 0 && i + 1 < argc)
            name = argv[i + 1];
        else if (strncmp(a, "--name=", 7) == 0)
            name = a + 7;
        else if (strcmp(a, "--state-dir") == 0 && i + 1 < argc)
            state_dir = argv[i + 1];
        else if (strncmp(a, "--state-dir=", 12) == 0)
            state_dir = a + 12;
    }
    int n = snprintf(dir, size, "%s/%s", state_dir, name);
    return n > 0 && (size_t)n < size;
}

/* A connection to the agent in dir, or -1. Through an O_PATH descriptor:
 * a long state directory cannot exceed sun_path's 108 bytes that way. */
static int connect_agent(const char *dir)
{
    int dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -1;
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof sa.sun_path, "/proc/self/fd/%d/" SOCKET_NAME, dfd);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        fd = -1;
    }
    close(dfd);
    return fd;
}

static size_t build_request(char *buf, int argc, char **argv)
{
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        return 0;
    size_t len = 0;
    const char *head[] = { PROTOCOL, cwd };
    for (int i = 0; i < 2 + argc; i++) {
        const char *s = i < 2 ? head[i] : argv[i - 2];
        size_t n = strlen(s) + 1;
        if (len + n > REQUEST_MAX)
            return 0;
        memcpy(buf + len, s, n);
        len += n;
    }
    return len - 1;                        /* NUL-separated, not terminated */
}

static int send_request(int fd, const char *buf, size_t len)
{
    int fds[2] = { STDOUT_FILENO, STDERR_FILENO };
    union {
        char buf[CMSG_SPACE(sizeof fds)];
        struct cmsghdr align;
    } control;
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                          .msg_controllen = sizeof control.buf };
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    return sendmsg(fd, &msg, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -1;
}

/* recv, retried across the signals we handle. */
static ssize_t receive(int fd, char *buf, size_t size)
{
    ssize_t n;
    do
        n = recv(fd, buf, size - 1, 0);
    while (n < 0 && errno == EINTR);
    if (n >= 0)
        buf[n] = '\0';
    return n;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: swapcopy-handoff PYTHON MAIN_SCRIPT [swapcopy-migrate arguments]"
                        " (scripts/swapcopy-migrate runs it)\n");
        return 2;
    }
    char dir[PATH_MAX];
    int nargs = argc - 3;
    char **args = argv + 3;
    if (!agent_dir(nargs, args, dir, sizeof dir))
        run_python(argc, argv);
    int fd = connect_agent(dir);
    if (fd < 0)
        run_python(argc, argv);                  /* nothing prepared ahead, or its agent is gone */
    static char request[REQUEST_MAX];
    size_t len = build_request(request, nargs, args);
    char answer[64];
    if (len == 0 || send_request(fd, request, len) < 0 || receive(fd, answer, sizeof answer) <= 0 ||
        strcmp(answer, "accepted") != 0) {
        close(fd);
        run_python(argc, argv);                  /* declined (it logs why): run it here */
    }
    agent_fd = fd;
    struct sigaction sa = { .sa_handler = on_signal };   /* no SA_RESTART: recv returns */
    sigemptyset(&sa.sa_mask);
    int sigs[] = { SIGINT, SIGTERM, SIGHUP };
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        if (sigaction(sigs[i], &sa, NULL) < 0)
            fprintf(stderr, "swapcopy-migrate: cannot catch signal %d (%s): interrupting this "
                            "command will not cancel the migration\n", sigs[i], strerror(errno));
    int status = -1;
    for (;;) {
        ssize_t n = receive(fd, answer, sizeof answer);
        if (n > 5 && strncmp(answer, "exit ", 5) == 0) {
            status = atoi(answer + 5);
            continue;                      /* until it has exited: the connection closes */
        }
        if (n <= 0) {
            if (status >= 0)
                return status;
            fprintf(stderr, "swapcopy-migrate: the prepared destination's agent ended without "
                            "an exit status (%s): see its log, %s.agent.log\n",
                    n < 0 ? strerror(errno) : "it closed the connection", dir);
            return 1;
        }
    }
}
