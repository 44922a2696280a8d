"""The prepared destination's agent.

`swapcopy-migrate --prepare-only` sets the destination up (swap device,
armed RAM) and leaves this process behind, detached, with everything a
migration needs already loaded: Python's start-up and imports alone took
~70 ms of the way from the operator's `swapcopy-migrate` to the switch.
Meanwhile it
  - holds the armed region with `swapstub map --wait-go` (its pagemap read
    done ahead; registration still waits for the source's export),
  - listens on STATE/NAME/agent.sock for the one migration it prepared
    for (the command line, and the caller's standard
    output and error to write to: handoff/swapcopy-handoff.c, which
    scripts/swapcopy-migrate runs first),
  - undoes the preparation if the destination QEMU exits, and exits if
    the preparation is undone under it (teardown-swap.sh),
  - exits on SIGTERM leaving the preparation for --unprepare, which sends it.
It does not hold the destination's QMP socket while it waits (QEMU serves
one client at a time there): it connects again when told to migrate.
"""
import array
import fcntl
import os
import select
import signal
import socket
import sys
import threading

from swapcopy_source import log

# handoff/swapcopy-handoff.c speaks the other side.
PROTOCOL = b"swapcopy-migrate/1"
SOCKET_NAME = "agent.sock"


def cmdline_of(pid):
    """The process's command line; empty once it has exited (a zombie's is
    empty too) or if there is no such process."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def agent_alive(pid):
    """Whether `pid` is still a swapcopy-migrate agent (not a reused pid)."""
    args = cmdline_of(pid)
    return b"swapcopy_migrate_main.py" in args or b"swapcopy-migrate" in args


class Agent:
    def __init__(self, migration, parser):
        self.m = migration
        self.parser = parser
        self.dir = os.path.dirname(migration.prepared_path())
        self.socket_path = os.path.join(self.dir, SOCKET_NAME)
        self.log_path = self.dir + ".agent.log"
        self.conn = None
        self.finished = False

    # ---- start-up, in the preparing process ---------------------------------

    def start(self):
        """Fork the agent; return its pid once it listens."""
        sys.stdout.flush()
        sys.stderr.flush()
        r, w = os.pipe()
        pid = os.fork()
        if pid:
            os.close(w)
            with os.fdopen(r, "rb") as f:
                said = f.read()
            if said != b"listening":
                os.waitpid(pid, 0)
                why = said.decode(errors="replace") or "it exited"
                raise OSError(f"the prepared destination's agent did not start ({why}); "
                              f"see {self.log_path}")
            return pid
        # The agent: a process of its own, nothing of the caller's held
        # open (a caller that waits for its output to end would wait on it).
        os.close(r)
        try:
            os.setsid()
            self.detach()
            listener = self.listen()
            # What a migration would otherwise wait for is under way before
            # the caller hears back: a migration started right away (as
            # bench/vs-qemu-postcopy does) found the region's read unfinished.
            self.m.start_early_map()
            self.m.wait_early_map_attached()
            if self.m.a.role == "both":
                self.m.start_exporter_ahead()
            self.m.save_prepared(agent_pid=os.getpid())
            os.write(w, b"listening")
        except BaseException as e:          # noqa: B902 - reported to the parent, whatever it is
            os.write(w, str(e).encode())
            os._exit(1)
        os.close(w)
        try:
            rc = self.serve(listener)
        except BaseException as e:          # noqa: B902 - this process must end here, whatever it is
            log(f"FAILED: {e}")
            rc = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)

    def detach(self):
        logfd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(logfd, 1)
        os.dup2(logfd, 2)
        for fd in (null, logfd):
            os.close(fd)
        # What the caller handed down (bats' descriptor 3, say): the only
        # descriptors without close-on-exec, as Python opens none without
        # it. Closing one a Python object holds would let that object close
        # a stranger's later.
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                if fd > 2 and not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
                    os.close(fd)
            except OSError:
                pass                        # the listing's own descriptor, closed by now

    def listen(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        dfd = os.open(self.dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            path = f"/proc/self/fd/{dfd}/{SOCKET_NAME}"
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            old = os.umask(0o077)
            try:
                s.bind(path)
            finally:
                os.umask(old)
        finally:
            os.close(dfd)
        s.listen(4)
        return s

    # ---- waiting -----------------------------------------------------------

    def serve(self, listener):
        m = self.m
        log(f"agent (pid {os.getpid()}) of the destination prepared in {m.prepare_s:.3f} s: "
            f"waiting on {self.socket_path} for the migration")
        try:
            qemu = os.pidfd_open(m.dst_pid)
        except OSError as e:
            log(f"cannot watch the destination QEMU (pid {m.dst_pid}): {e.strerror}; undoing "
                f"the preparation")
            self.unlink_socket()
            m.run_unprepare()
            return 1
        poller = select.poll()
        poller.register(listener, select.POLLIN)
        poller.register(qemu, select.POLLIN)
        try:
            while True:
                if not os.path.exists(m.prepared_path()):
                    # teardown-swap.sh (or a test's sweep) undid it under us.
                    log(f"{m.prepared_path()} is gone: nothing left to migrate")
                    self.unlink_socket()
                    m.drop_early_map()
                    m.drop_exporter_ahead()
                    return 0
                for fd, _ in poller.poll(1000):
                    if fd == qemu:
                        log(f"the destination QEMU (pid {m.dst_pid}) exited: undoing the "
                            f"preparation")
                        self.unlink_socket()
                        m.drop_early_map()
                        m.drop_exporter_ahead()
                        m.run_unprepare()
                        return 0
                    conn, _ = listener.accept()
                    rc = self.take(conn, listener)
                    if rc is not None:
                        return rc
        except KeyboardInterrupt:
            log("stopped; the preparation stays (swapcopy-migrate --unprepare undoes it)")
            self.unlink_socket()
            m.drop_early_map()
            m.drop_exporter_ahead()
            return 0

    def unlink_socket(self):
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass

    # ---- one request -------------------------------------------------------

    def take(self, conn, listener):
        """A caller's command: decline it (None; the caller runs it itself)
        or run it to the end and return the exit status."""
        fds = []
        try:
            msg, anc, _, _ = conn.recvmsg(1 << 16, socket.CMSG_SPACE(2 * array.array("i").itemsize))
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(data[:len(data) - len(data) % a.itemsize])
                    fds += list(a)
            why = self.decline_reason(msg.split(b"\0"), fds)
            conn.send(b"decline" if why else b"accepted")
        except OSError as e:
            why = f"the request could not be read or answered: {e}"
        if why:
            log(f"declined a command (the caller runs it by itself): {why}")
            for fd in fds:
                os.close(fd)
            conn.close()
            return None
        self.conn = conn
        log(f"took the migration (swapcopy-migrate {' '.join(self.argv)}); its output goes to "
            f"the caller's")
        # This preparation is being migrated: nobody else connects.
        listener.close()
        self.unlink_socket()
        os.chdir(self.cwd)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in fds:
            os.close(fd)
        threading.Thread(target=self.watch_caller, daemon=True).start()
        m = self.m
        m.a = self.args
        from swapcopy_migrate import execute     # noqa: E402 - loaded by now; a cycle otherwise
        rc = execute(m, self.args, m.run_prepared if self.args.role == "both" else
                     m.run_destination)
        self.finished = True
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            self.conn.send(f"exit {rc}".encode())
        except OSError:
            pass
        return rc

    def decline_reason(self, parts, fds):
        m = self.m
        if len(parts) < 2 or parts[0] != PROTOCOL:
            return f"not a {PROTOCOL.decode()} request"
        if len(fds) != 2:
            return f"{len(fds)} file descriptors came with it, not 2 (standard output and error)"
        self.cwd = os.fsdecode(parts[1])
        argv = self.argv = [os.fsdecode(p) for p in parts[2:]]
        try:
            a = self.parser.parse_args(argv)
        except SystemExit:
            return f"its arguments do not parse: {argv}"
        if a.prepare_only or a.unprepare or not a.dst_qmp or \
                not (a.src_qmp if a.role == "both" else a.role == "destination" and a.source):
            return ("it is not a migration into this destination (--src-qmp and --dst-qmp; or "
                    "--role destination, --dst-qmp and --source)")

        def same_path(p, q):
            return os.path.realpath(os.path.join(self.cwd, p)) == os.path.realpath(q)

        mine = m.a
        if not same_path(a.state_dir, mine.state_dir) or a.name != mine.name:
            return f"it names {a.state_dir}/{a.name}, not {mine.state_dir}/{mine.name}"
        if not same_path(a.dst_qmp, mine.dst_qmp) or a.dst_pid not in (None, m.dst_pid) or \
                a.block != mine.block or (a.source or a.source_listen) != m.source_addr:
            return (f"it is for destination {a.dst_qmp} (pid {a.dst_pid}), block '{a.block}', "
                    f"source {a.source or a.source_listen}; this agent prepared "
                    f"{mine.dst_qmp} (pid {m.dst_pid}), '{mine.block}', {m.source_addr}")
        if not same_path(a.build, mine.build):
            return f"it uses the build in {a.build}; this agent's is {mine.build}"
        # Paths the migration opens, as the caller meant them.
        for attr in ("src_qmp", "dst_qmp", "json", "src_ram", "tls_psk", "tls_certificates",
                     "build", "state_dir"):
            v = getattr(a, attr)
            if v:
                setattr(a, attr, os.path.join(self.cwd, v))
        self.args = a
        return None

    def watch_caller(self):
        """The caller's Ctrl-C stops the migration as it would have stopped
        it running there. A caller that goes without a word (killed, its
        terminal closed) cancels a migration that has not switched yet;
        after the switch the guest needs the landing finished, so it goes
        on, writing to this agent's log instead."""
        while True:
            try:
                got = self.conn.recv(64)
            except OSError:
                got = b""
            if self.finished:
                return
            if got == b"interrupt":
                os.kill(os.getpid(), signal.SIGTERM)
                continue
            if got:
                continue
            if self.m.switched:
                fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)
                log("the caller went away after the switch: finishing the landing, output here")
            else:
                os.kill(os.getpid(), signal.SIGTERM)
            return
