"""One QEMU process running the memwalk guest, watched from the outside.

Every QEMU gets two QMP monitors: "ctl" for a migration driver that wants a
socket of its own (scripts/swapcopy-migrate), and "bench" for this harness,
which both sends commands and records every event with QEMU's own
timestamp. QEMU broadcasts events to all monitors, so the harness sees the
source's STOP and the destination's RESUME whatever drives the migration.

The serial port goes to a FIFO read by a thread that stamps each line with
the host's wall clock (time.time(), the clock QMP event timestamps and
QEMU's trace log use too), so PASS lines, events and trace records share
one time axis.
"""
import json
import os
import queue
import select
import socket
import subprocess
import threading
import time


class GuestError(Exception):
    pass


class QMPClient:
    """QMP over a Unix socket with a reader thread: replies go to whoever
    waits in cmd(), events are kept with their timestamps."""

    def __init__(self, path, timeout=30.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            raise GuestError(f"cannot connect to QMP socket {path}: {e}") from e
        self.file = self.sock.makefile("rw")
        greeting = self.file.readline()
        if "QMP" not in greeting:
            raise GuestError(f"{path} does not speak QMP (got {greeting!r})")
        self.sock.settimeout(None)
        self.events = []
        self.replies = queue.Queue()
        self.lock = threading.Lock()
        self.closed = False
        self.reader = threading.Thread(target=self._read_loop, daemon=True)
        self.reader.start()
        self.cmd("qmp_capabilities")

    def _read_loop(self):
        while True:
            try:
                line = self.file.readline()
            except (OSError, ValueError):
                line = ""
            if not line:
                self.closed = True
                self.replies.put(None)
                return
            msg = json.loads(line)
            if "event" in msg:
                ts = msg.get("timestamp", {})
                msg["t"] = ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6
                self.events.append(msg)
            else:
                self.replies.put(msg)

    def cmd(self, name, timeout=60.0, **args):
        req = {"execute": name}
        if args:
            req["arguments"] = args
        with self.lock:
            if self.closed:
                raise GuestError(f"QMP {self.path}: QEMU has closed the socket (it exited?)")
            self.file.write(json.dumps(req) + "\n")
            self.file.flush()
            try:
                r = self.replies.get(timeout=timeout)
            except queue.Empty:
                raise GuestError(f"QMP {self.path}: no answer to {name} in {timeout} s") from None
        if r is None:
            raise GuestError(f"QMP {self.path}: QEMU closed the socket before answering {name}")
        if "error" in r:
            raise GuestError(f"{name} failed on {self.path}: {r['error'].get('desc', r['error'])}")
        return r.get("return")

    def event_time(self, name, after=0.0, pred=None):
        """Timestamp of the first event NAME at or after `after` (None if none)."""
        for e in list(self.events):
            if e["event"] == name and e["t"] >= after and (pred is None or pred(e)):
                return e["t"]
        return None

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class SerialLog:
    """Reads a FIFO QEMU's serial port writes to; keeps (time, line) pairs.
    The FIFO is opened read-write so that it never reports end-of-file
    while QEMU has not opened it yet or has closed it."""

    def __init__(self, fifo, copy_to):
        self.lines = []
        self.fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        self.copy = open(copy_to, "w")
        self.stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        buf = b""
        while not self.stop:
            r, _, _ = select.select([self.fd], [], [], 0.2)
            if not r:
                continue
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            now = time.time()
            buf += data
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode(errors="replace").rstrip("\r")
                self.lines.append((now, line))
                self.copy.write(f"{now:.6f} {line}\n")
            self.copy.flush()

    def passes(self):
        """[(time, pass number)] for every PASS line so far."""
        out = []
        for t, line in list(self.lines):
            w = line.split()
            if len(w) == 2 and w[0] == "PASS" and w[1].isdigit():
                out.append((t, int(w[1])))
        return out

    def errors(self):
        return [line for _, line in list(self.lines)
                if line.startswith("ERROR") or line.startswith("FATAL")]

    def close(self):
        self.stop = True
        self.thread.join(timeout=2)
        os.close(self.fd)
        self.copy.close()


def vm_hwm_kib(pid):
    """Peak resident set (VmHWM) of a process in KiB, None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Guest:
    """A memwalk QEMU. role "src": RAM in a shared /dev/shm file, started
    paused (-S) and let go once the serial reader is attached, so that no
    line is missed. role "dst": private anonymous RAM, -incoming defer,
    QEMU's postcopy trace points logged with timestamps. `extra_args` go
    at the end of the command line (the patched QEMU's -postcopy swap);
    a source without `ram_file` has private anonymous RAM."""

    TRACE_EVENTS = ("postcopy_page_req_add", "postcopy_page_req_del",
                    "postcopy_ram_fault_thread_request")

    def __init__(self, work, name, role, mib, elf, append, ram_file=None, qemu="qemu-system-x86_64",
                 extra_args=()):
        self.name, self.role, self.mib = name, role, mib
        self.dir = work
        self.ctl_qmp = os.path.join(work, f"{name}.ctl.qmp")
        self.bench_qmp = os.path.join(work, f"{name}.bench.qmp")
        self.fifo = os.path.join(work, f"{name}.fifo")
        self.trace = os.path.join(work, f"{name}.trace") if role == "dst" else None
        self.ram_file = ram_file
        for p in (self.ctl_qmp, self.bench_qmp, self.fifo):
            if os.path.exists(p):
                os.unlink(p)
        os.mkfifo(self.fifo)
        args = [qemu, "-accel", "tcg", "-m", f"{mib}M", "-machine", "pc,memory-backend=mem",
                "-display", "none", "-nodefaults", "-no-reboot", "-kernel", elf,
                "-chardev", f"file,id=serial0,path={self.fifo}", "-serial", "chardev:serial0",
                "-qmp", f"unix:{self.ctl_qmp},server=on,wait=off",
                "-qmp", f"unix:{self.bench_qmp},server=on,wait=off"]
        if append:
            args += ["-append", append]
        if role == "src" and ram_file:
            args += ["-object", f"memory-backend-file,id=mem,size={mib}M,mem-path={ram_file},"
                     "share=on", "-S"]
        elif role == "src":   # private RAM: only for checking QEMU's own modes
            args += ["-object", f"memory-backend-ram,id=mem,size={mib}M", "-S"]
        else:
            args += ["-object", f"memory-backend-ram,id=mem,size={mib}M", "-incoming", "defer",
                     "-msg", "timestamp=on", "-D", self.trace]
            for ev in self.TRACE_EVENTS:
                args += ["-trace", ev]
        args += list(extra_args)
        self.serial = SerialLog(self.fifo, os.path.join(work, f"{name}.serial"))
        self.log = open(os.path.join(work, f"{name}.qemu.log"), "w")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self.qmp = None
        deadline = time.time() + 30
        while not (os.path.exists(self.bench_qmp) and os.path.exists(self.ctl_qmp)):
            if self.proc.poll() is not None or time.time() > deadline:
                raise GuestError(f"QEMU {name} did not start (no QMP socket); see {self.log.name}")
            time.sleep(0.05)
        self.qmp = QMPClient(self.bench_qmp)
        if role == "src":
            self.qmp.cmd("cont")

    def alive(self):
        return self.proc.poll() is None

    def wait_pass(self, n, timeout):
        """Wait for PASS n (or later); raise on ERROR/FATAL, exit or timeout."""
        deadline = time.time() + timeout
        while True:
            errs = self.serial.errors()
            if errs:
                raise GuestError(f"{self.name}: memwalk reported: {errs[0]}")
            p = self.serial.passes()
            if p and p[-1][1] >= n:
                return p[-1]
            if not self.alive():
                raise GuestError(f"{self.name}: QEMU exited (status {self.proc.returncode}); "
                                 f"see {self.log.name}")
            if time.time() > deadline:
                raise GuestError(f"{self.name}: no PASS {n} within {timeout:.0f} s "
                                 f"(last: {p[-1] if p else 'none'})")
            time.sleep(0.02)

    def hwm_kib(self):
        return vm_hwm_kib(self.pid)

    def stop(self):
        """Terminate QEMU (SIGTERM, then SIGKILL after 5 s) and the reader."""
        if self.qmp:
            self.qmp.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.serial.close()
        self.log.close()
        for p in (self.ctl_qmp, self.bench_qmp, self.fifo):
            if os.path.exists(p):
                os.unlink(p)
