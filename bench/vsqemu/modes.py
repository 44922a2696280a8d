"""The migration modes compared, each driving one source/destination pair.

Every mode's migrate() starts at the harness's "begin" instant and returns
when the migration is complete (the destination no longer needs the
source), with what that mode alone can report. Figures measured the same
way for every mode (STOP/RESUME events, PASS lines, VmHWM) are taken by the
harness, not here.
"""
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

from .guest import GuestError, vm_hwm_kib

HERE = os.path.dirname(os.path.abspath(__file__))
SRC_ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))

GiB = 1 << 30


class ModeFailed(Exception):
    """The migration did not happen; `switched` says whether the guest had
    already left the source."""

    def __init__(self, msg, switched=False):
        super().__init__(msg)
        self.switched = switched


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def percentile(sorted_vals, q):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, int(q * len(sorted_vals)))
    return sorted_vals[i]


def parse_postcopy_trace(path):
    """Page-request latencies from the destination's trace log: from
    postcopy_page_req_add (the fault thread has read the userfault and
    queued a request for a page not yet received) to postcopy_page_req_del
    (that page placed with UFFDIO_COPY, which wakes the faulting vCPU).
    Returns (latencies in us, number of userfaults seen)."""
    add, lat, faults = {}, [], 0
    pat = re.compile(r"^\d+@(\d+\.\d+):(\S+) (.*)$")
    try:
        f = open(path, errors="replace")
    except OSError:
        return [], 0
    with f:
        for line in f:
            m = pat.match(line)
            if not m:
                continue
            t, ev, rest = float(m.group(1)), m.group(2), m.group(3)
            if ev == "postcopy_ram_fault_thread_request":
                faults += 1
            elif ev == "postcopy_page_req_add":
                add[rest.split()[3]] = t
            elif ev == "postcopy_page_req_del":
                a = rest.split()[3]
                if a in add:
                    lat.append((t - add.pop(a)) * 1e6)
    return sorted(lat), faults


def qemu_downtime(m):
    """QEMU 7.2's downtime, with one of its bugs undone: postcopy_start()
    measures the postcopy downtime, and when that comes out as 0 ms,
    migration_calculate_complete() takes the 0 for "not set yet" and
    overwrites it with end_time - downtime_start, where downtime_start was
    never set in postcopy: the result is about the host's uptime. Any
    downtime longer than the whole migration is that case: really < 1 ms."""
    d, total = m.get("downtime"), m.get("total-time")
    if d is not None and total is not None and d > total:
        return 0
    return d


def wait_migration(q, timeout, what):
    """Poll query-migrate on `q` until completed; raise on failure/timeout."""
    deadline = time.time() + timeout
    while True:
        m = q.cmd("query-migrate")
        st = m.get("status")
        if st == "completed":
            # QEMU sets the state before it fills in total-time and downtime
            # (migration_iteration_finish): read again until they are there.
            for _ in range(200):
                if m.get("total-time"):
                    break
                time.sleep(0.01)
                m = q.cmd("query-migrate")
            return m
        if st in ("failed", "cancelled"):
            raise ModeFailed(f"{what}: migration {st}: {m.get('error-desc', '')}",
                             switched=st == "failed" and m.get("ram", {}).get("postcopy-bytes", 0) > 0)
        if time.time() > deadline:
            return None
        time.sleep(0.01)


class QemuMode:
    """QEMU's own migration: precopy, or postcopy-ram switched right after
    `migrate` (optionally with postcopy-preempt)."""

    def __init__(self, name, postcopy=False, preempt=False, precopy_timeout=120):
        self.name, self.postcopy, self.preempt = name, postcopy, preempt
        self.precopy_timeout = precopy_timeout

    def migrate(self, src, dst, run_dir, build):
        caps = [{"capability": "events", "state": True}]
        if self.postcopy:
            caps += [{"capability": "postcopy-ram", "state": True},
                     {"capability": "postcopy-blocktime", "state": True}]
        if self.preempt:
            caps += [{"capability": "postcopy-preempt", "state": True}]
        for g in (src, dst):
            g.qmp.cmd("migrate-set-capabilities", capabilities=caps)
        # 7.2's default max-bandwidth (128 MiB/s) never lets a busy guest
        # converge (shared/notes/qemu-facts.md); postcopy's own limit 0 = none.
        src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 10 * GiB,
                                                 "max-postcopy-bandwidth": 0})
        uri = f"tcp:127.0.0.1:{free_port()}"
        dst.qmp.cmd("migrate-incoming", uri=uri)
        src.qmp.cmd("migrate", uri=uri)
        if self.postcopy:
            src.qmp.cmd("migrate-start-postcopy")
        m = wait_migration(src.qmp, self.precopy_timeout, self.name)
        if m is None:
            src.qmp.cmd("migrate_cancel")
            raise ModeFailed(f"{self.name}: not complete after {self.precopy_timeout} s "
                             f"(did not converge); cancelled")
        t_done = time.time()
        out = {"downtime_ms": qemu_downtime(m), "qemu_downtime_raw_ms": m.get("downtime"),
               "qemu_total_ms": m.get("total-time"),
               "wire_bytes": m["ram"]["transferred"], "t_done": t_done,
               "postcopy_requests": m["ram"].get("postcopy-requests"),
               "precopy_bytes": m["ram"].get("precopy-bytes"),
               "postcopy_bytes": m["ram"].get("postcopy-bytes"),
               "total_s": m.get("total-time", 0) / 1000.0}
        if self.postcopy:
            # The blocktime figures appear on the destination only, once
            # its side has finished too.
            deadline = time.time() + 15
            d = {}
            while time.time() < deadline:
                d = dst.qmp.cmd("query-migrate")
                if d.get("status") == "completed" and "postcopy-blocktime" in d:
                    break
                time.sleep(0.05)
            out["blocktime_ms"] = d.get("postcopy-blocktime")
        return out

    def collect_after_stop(self, dst, out):
        """Fault latencies from the destination's trace log (complete once
        QEMU has exited)."""
        if not self.postcopy:
            return
        lat, faults = parse_postcopy_trace(dst.trace)
        out["faults"] = faults
        out["fault_requests"] = len(lat)
        out["fault_p50_us"] = percentile(lat, 0.50)
        out["fault_p99_us"] = percentile(lat, 0.99)
        out["fault_max_us"] = lat[-1] if lat else None


def _proc_cmdlines():
    """(pid, argv as bytes) of every other process that can be read."""
    for e in os.listdir("/proc"):
        if not e.isdigit() or int(e) == os.getpid():
            continue
        try:
            with open(f"/proc/{e}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if args and args[0]:
            yield int(e), args


class HwmPoller:
    """Samples VmHWM of nbd-pagesrv (destination, pid from the state dir)
    and of the source exporter (found by its --export argument) while the
    swapcopy migration runs; both exit before swapcopy-migrate returns."""

    def __init__(self, pidfile, export_arg):
        self.pidfile, self.export_arg = pidfile, export_arg.encode()
        self.pagesrv_kib = self.exporter_kib = None
        self.pagesrv_pid = self.exporter_pid = None
        self.stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _find_exporter(self):
        for pid, args in _proc_cmdlines():
            if self.export_arg in args and args[0].endswith(b"nbd-pagesrv"):
                return pid
        return None

    def _tick(self):
        """Called first in every 50 ms round; subclasses watch more."""

    def _loop(self):
        tick = 0
        while not self.stop:
            self._tick()
            if self.pagesrv_pid is None and os.path.exists(self.pidfile):
                try:
                    self.pagesrv_pid = int(open(self.pidfile).read().strip())
                except (OSError, ValueError):
                    pass
            if self.exporter_pid is None and tick % 4 == 0:   # a /proc scan costs
                self.exporter_pid = self._find_exporter()
            tick += 1
            for attr, pid in (("pagesrv_kib", self.pagesrv_pid),
                              ("exporter_kib", self.exporter_pid)):
                if pid:
                    v = vm_hwm_kib(pid)
                    if v is not None:
                        setattr(self, attr, max(v, getattr(self, attr) or 0))
            time.sleep(0.05)

    def finish(self):
        self.stop = True
        self.thread.join(timeout=5)


def wait_swap_slot(timeout, log):
    """swapcopy's device goes one priority above every other device, which
    a device at 32767 (the highest there is: other sessions' benchmarks on
    this machine use it) makes impossible. Wait for it to go instead of
    failing."""
    deadline = time.time() + timeout
    said = False
    while True:
        busy = []
        with open("/proc/swaps") as f:
            for line in f.readlines()[1:]:
                w = line.split()
                if len(w) >= 5 and int(w[4]) >= 32767:
                    busy.append(w[0])
        if not busy:
            return
        if not said:
            log(f"waiting for swap priority 32767 to be free (held by {', '.join(busy)}, "
                f"another session's test?)")
            said = True
        if time.time() > deadline:
            raise ModeFailed(f"swap priority 32767 still taken by {busy} after {timeout} s")
        time.sleep(1)


class SwapcopyMode:
    """swapcopy with stock QEMU 7.2: scripts/swapcopy-migrate (source RAM in
    /dev/shm share=on, destination private RAM armed as swapped out)."""

    name = "swapcopy"

    def __init__(self, log, slot_timeout=300):
        self.log = log
        self.slot_timeout = slot_timeout
        self.proc = None
        self.state_dir = self.swap_name = self.listen = None

    def prepare(self, src, dst, run_dir, build):
        """Before `migrate`, as an operator would while the destination
        waits with -incoming: swapcopy-migrate --prepare-only (swap device,
        arming). Returns its time."""
        wait_swap_slot(self.slot_timeout, self.log)
        self.state_dir = os.path.join(run_dir, "swapcopy-state")
        self.swap_name = f"vsq{os.getpid()}-{os.path.basename(run_dir)[:20]}"
        self.listen = f"127.0.0.1:{free_port()}"
        t = time.time()
        r = subprocess.run([os.path.join(SRC_ROOT, "scripts", "swapcopy-migrate"),
                            "--prepare-only", "--dst-qmp", dst.ctl_qmp, "--dst-pid", str(dst.pid),
                            "--name", self.swap_name, "--state-dir", self.state_dir,
                            "--source-listen", self.listen, "--build", build],
                           capture_output=True, text=True)
        with open(os.path.join(run_dir, "swapcopy-prepare.log"), "w") as f:
            f.write(r.stdout + r.stderr)
        if r.returncode != 0:
            raise ModeFailed(f"swapcopy-migrate --prepare-only exited {r.returncode}: "
                             f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
        return time.time() - t

    def migrate(self, src, dst, run_dir, build):
        t_begin = time.time()
        summary = os.path.join(run_dir, "swapcopy-summary.json")
        cmd = [os.path.join(SRC_ROOT, "scripts", "swapcopy-migrate"),
               "--src-qmp", src.ctl_qmp, "--dst-qmp", dst.ctl_qmp, "--dst-pid", str(dst.pid),
               "--name", self.swap_name, "--state-dir", self.state_dir,
               "--source-listen", self.listen, "--migrate-uri", f"tcp:127.0.0.1:{free_port()}",
               "--build", build, "--json", summary, "--progress-interval", "5"]
        poller = HwmPoller(os.path.join(self.state_dir, self.swap_name, "pagesrv.pid"),
                           f"mem={src.ram_file}")
        logf = open(os.path.join(run_dir, "swapcopy-migrate.log"), "w")
        # Own session: Ctrl-C reaches the harness, which then stops this
        # cleanly (SIGTERM = abort and undo in swapcopy-migrate).
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            rc = self.proc.wait()
        finally:
            poller.finish()
            logf.close()
        self.proc = None
        t_done = time.time()
        if rc != 0:
            lines = open(logf.name).read().strip().splitlines()
            why = [l for l in lines if "FAILED" in l] or lines[-2:]
            switched = src.qmp.event_time("STOP") is not None
            raise ModeFailed(f"swapcopy-migrate exited {rc}: {' | '.join(why)}", switched)
        s = json.load(open(summary))
        # swapcopy-migrate reads downtime as soon as the state says
        # completed, which can be before QEMU has filled it in; by now it is.
        m = wait_migration(src.qmp, 5, "swapcopy") or {}
        fl = s["fault_fetch_latency_us"]
        return {"downtime_ms": qemu_downtime(m) if m else s["downtime_ms"],
                "downtime_summary_ms": s["downtime_ms"], "switchover_s": s["switchover_s"],
                # begin (this run, after the preparation) -> device detached
                "arm_s": s["arm_s"], "total_s": s["arm_s"] + s["total_s"],
                "prepare_s_summary": s.get("prepare_s"),
                "after_migrate_s": s["total_s"], "all_local_s": s["time_to_all_local_s"],
                # every page crossed the device once, into the guest (land mode)
                "all_landed_s": s.get("time_to_all_landed_s"),
                # device-state migration's own RAM bytes (ROMs, ACPI) + pages pulled
                "wire_bytes": s["bytes_fetched"] + m.get("ram", {}).get("transferred", 0),
                "bytes_fetched": s["bytes_fetched"], "pages": s["pages"],
                "faults": fl["count"], "fault_p50_us": fl["p50"], "fault_p99_us": fl["p99"],
                "fault_max_us": fl["max"], "nbd_read_latency_us": s["nbd_read_latency_us"],
                "pagesrv_hwm_kib": poller.pagesrv_kib, "exporter_hwm_kib": poller.exporter_kib,
                "t_done": t_done, "t_begin": t_begin}

    def collect_after_stop(self, dst, out):
        pass

    def abort(self):
        """Ctrl-C or an error: stop swapcopy-migrate (it cancels and undoes
        what it set up before the switch)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self, build):
        """After the QEMUs are gone: undo the swap device if swapcopy-migrate
        left it (it does not tear down after the switch on failure), and end
        the source exporter if it is still there."""
        if self.state_dir and os.path.isdir(os.path.join(self.state_dir, self.swap_name or "")):
            subprocess.run([os.path.join(SRC_ROOT, "scripts", "teardown-swap.sh"),
                            "--name", self.swap_name, "--state-dir", self.state_dir],
                           capture_output=True, env=dict(os.environ, SWAPCOPY_BUILD=build))


class PagesrvWatcher(HwmPoller):
    """While a patched-QEMU migration runs: asks the destination's
    nbd-pagesrv (its control socket, once setup-swap.sh has made it) for
    `status` every 50 ms and keeps the last answer, the one saying
    `complete` at best (QEMU finishes and tears the device down right
    after); samples VmHWM of that nbd-pagesrv and of the source's exporter
    (a child of the source QEMU)."""

    def __init__(self, ctl_path, pidfile, src_pid):
        self.ctl_path, self.src_pid = ctl_path, src_pid
        self.status = self.stats = None
        self.sock = self.file = None
        super().__init__(pidfile, "")     # starts the thread: everything above first

    def _request(self, what):
        self.file.write(what + "\n")
        self.file.flush()
        line = self.file.readline()
        if not line:
            raise OSError("control socket closed")
        return json.loads(line)

    def _poll_control(self):
        if self.status and self.status.get("state") == "complete":
            return
        if self.sock is None:
            if not os.path.exists(self.ctl_path):
                return
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect(self.ctl_path)
            except OSError:
                s.close()
                return
            self.sock, self.file = s, s.makefile("rw")
        try:
            st = self._request("status")
            if "error" not in st:
                self.status = st
            if st.get("state") == "complete":
                self.stats = self._request("stats")
        except (OSError, ValueError):
            self._close()

    def _close(self):
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = self.file = None

    def _find_exporter(self):
        try:
            tasks = os.listdir(f"/proc/{self.src_pid}/task")
        except OSError:
            return None
        for t in tasks:
            try:
                kids = open(f"/proc/{self.src_pid}/task/{t}/children").read().split()
            except OSError:
                continue
            for k in kids:
                try:
                    if open(f"/proc/{k}/comm").read().strip() == "nbd-pagesrv":
                        return int(k)
                except OSError:
                    pass
        return None

    def _tick(self):
        self._poll_control()

    def finish(self):
        super().finish()
        self._close()


def _procs_with_args(*words):
    """PIDs of processes whose command line holds every one of `words`."""
    want = [w.encode() for w in words]
    return [pid for pid, args in _proc_cmdlines() if all(w in args for w in want)]


class PatchedSwapcopyMode:
    """swapcopy with the patched QEMU of qemu-patches/: both QEMUs are the
    patched binary; the source's RAM is private anonymous memory (no
    /dev/shm file), served by the source QEMU itself (-postcopy
    swap,server=...,listen=...: it starts nbd-pagesrv --export at
    `migrate`); the destination (-postcopy swap,src=...,setup=...) runs
    setup-swap.sh when the stream arrives, arms its RAM in-process, loads
    the device state, streams, converts and tears the device down by
    itself. The harness boots the pair with guest_options()."""

    name = "swapcopy-patched"

    def __init__(self, qemu_binary, log, slot_timeout=300):
        if not qemu_binary:
            raise ModeFailed("swapcopy-patched: no patched QEMU (qemu-patches/build.sh)")
        self.qemu_binary, self.log, self.slot_timeout = qemu_binary, log, slot_timeout
        self.state_dir = self.swap_name = self.listen = None
        self.src = self.dst = None
        self.watcher = None
        self.migrating = False   # `migrate` issued, source not completed/failed yet
        self.exporter_pid = None

    def guest_options(self, run_dir, build, mib):
        """Keyword arguments for the harness's Guest(): the patched binary,
        no RAM file on the source, and each side's -postcopy swap."""
        # Unix socket paths (state dir/NAME/ctl.sock) must stay < 108 bytes:
        # not under the results directory.
        # The destination sets its device up as soon as it starts.
        wait_swap_slot(self.slot_timeout, self.log)
        self.state_dir = f"/run/vsqemu-{os.getpid()}"
        self.swap_name = f"p{os.getpid()}-{os.path.basename(run_dir)[:3]}"
        self.listen = f"127.0.0.1:{free_port()}"
        pagesrv = os.path.join(build, "nbd-pagesrv")
        setup = os.path.join(SRC_ROOT, "scripts", "setup-swap.sh")
        return {"qemu": self.qemu_binary, "src_ram_file": None,
                "src_args": ["-postcopy", f"swap,server={pagesrv},listen={self.listen}"],
                "dst_args": ["-postcopy",
                             f"swap,src={self.listen},setup={setup},name={self.swap_name},"
                             f"state-dir={self.state_dir},server={pagesrv}"]}

    def _switched(self, src):
        """Has the guest left the source? (Before the switch a failure
        restarts the source's guest; after it, nothing is restarted.)"""
        if src.qmp.event_time("STOP", after=self.t_migrate - 1) is None:
            return False
        try:
            return src.qmp.cmd("query-status", timeout=10)["status"] != "running"
        except GuestError:
            return True

    def prepare(self, src, dst, run_dir, build):
        """The destination prepares itself at start-up (-postcopy swap with
        -incoming): wait until its query-migrate says so; its own figure is
        the preparation time."""
        deadline = time.time() + 120 + 0.05 * src.mib
        while True:
            ps = dst.qmp.cmd("query-migrate", timeout=30).get("postcopy-swap", {})
            if ps.get("state") == "prepared":
                return ps["prepare-time"] / 1000
            if ps.get("state") == "failed":
                raise ModeFailed(f"swapcopy-patched: the destination's preparation failed: "
                                 f"{ps.get('error')}")
            if time.time() > deadline or not dst.alive():
                raise ModeFailed(f"swapcopy-patched: the destination is not prepared "
                                 f"(state {ps.get('state')})" + self._dst_error(dst))
            time.sleep(0.02)

    def migrate(self, src, dst, run_dir, build):
        self.src, self.dst = src, dst
        timeout = 120 + 0.5 * src.mib   # arming is seconds per 128 MiB here
        t_begin = time.time()
        src.qmp.cmd("migrate-set-capabilities",
                    capabilities=[{"capability": "events", "state": True},
                                  {"capability": "postcopy-swap", "state": True}])
        uri = f"tcp:127.0.0.1:{free_port()}"
        dst.qmp.cmd("migrate-incoming", uri=uri)
        sd = os.path.join(self.state_dir, self.swap_name)
        self.watcher = PagesrvWatcher(os.path.join(sd, "ctl.sock"),
                                      os.path.join(sd, "pagesrv.pid"), src.pid)
        self.t_migrate = time.time()
        src.qmp.cmd("migrate", uri=uri)
        self.migrating = True
        deadline = self.t_migrate + timeout
        s = d = {}
        t_src_done = t_dst_done = None
        postcopy_active = False
        try:
            while t_src_done is None or t_dst_done is None:
                if time.time() > deadline:
                    raise ModeFailed(f"swapcopy-patched: not done after {timeout:.0f} s (source "
                                     f"{s.get('status')}, destination postcopy-swap "
                                     f"{d.get('postcopy-swap', {}).get('state')})",
                                     switched=self._switched(src))
                if t_src_done is None:
                    s = src.qmp.cmd("query-migrate")
                    st = s.get("status")
                    postcopy_active |= st == "postcopy-active"
                    if st == "completed":
                        t_src_done = time.time()
                        self.migrating = False
                    elif st in ("failed", "cancelled"):
                        self.migrating = False
                        raise ModeFailed(f"swapcopy-patched: source migration {st}: "
                                         f"{s.get('error-desc', '')}"
                                         + self._dst_error(dst),
                                         switched=postcopy_active or self._switched(src))
                # The destination's monitor does not answer while it arms
                # (main thread); ask only once the source knows it loaded.
                if t_dst_done is None and (postcopy_active or t_src_done):
                    if not dst.alive():
                        raise ModeFailed("swapcopy-patched: destination QEMU exited"
                                         + self._dst_error(dst), switched=True)
                    d = dst.qmp.cmd("query-migrate", timeout=120)
                    ps = d.get("postcopy-swap", {})
                    if ps.get("state") == "finished":
                        t_dst_done = time.time()
                    elif ps.get("state") == "failed":
                        raise ModeFailed(f"swapcopy-patched: destination postcopy-swap failed: "
                                         f"{ps.get('error')}", switched=True)
                elif t_src_done is None and not dst.alive():
                    raise ModeFailed("swapcopy-patched: destination QEMU exited"
                                     + self._dst_error(dst), switched=self._switched(src))
                time.sleep(0.02)
            # QEMU sets `completed` before it fills in total-time and downtime.
            for _ in range(200):
                if s.get("total-time"):
                    break
                time.sleep(0.01)
                s = src.qmp.cmd("query-migrate")
        finally:
            self.watcher.finish()
        w = self.watcher
        self.exporter_pid = w.exporter_pid
        ps = d["postcopy-swap"]
        t_src_ev = src.qmp.event_time("MIGRATION", after=self.t_migrate - 1,
                                      pred=lambda e: e["data"].get("status") == "completed")
        t_done = max(t_src_done, t_dst_done)
        out = {"downtime_ms": qemu_downtime(s), "qemu_downtime_raw_ms": s.get("downtime"),
               "qemu_total_ms": s.get("total-time"),
               # begin -> the source completed (exporter gone) and the
               # destination finished (every page plain memory, device gone)
               "total_s": t_done - self.t_migrate,
               "src_done_s": (t_src_ev or t_src_done) - self.t_migrate,
               "dst_finished_s": t_dst_done - self.t_migrate,
               "dst_arm_ms": ps.get("arm-time"), "dst_finish_ms": ps.get("finish-time"),
               "dst_prepare_ms": ps.get("prepare-time"),
               # device state's own RAM bytes (none with postcopy-swap) + pages pulled
               "wire_bytes": ps.get("bytes-fetched", 0) + s.get("ram", {}).get("transferred", 0),
               "bytes_fetched": ps.get("bytes-fetched"),
               "pages": {k[6:]: v for k, v in ps.items() if k.startswith("pages-")},
               "pagesrv_hwm_kib": w.pagesrv_kib, "exporter_hwm_kib": w.exporter_kib,
               "t_done": t_done, "t_begin": t_begin}
        st = w.status
        if st:
            fl = st["fetch_latency_us"]
            out.update({"faults": fl["count"], "fault_p50_us": fl["p50"],
                        "fault_p99_us": fl["p99"], "fault_max_us": fl["max"],
                        "pagesrv_last_state": st.get("state")})
            if st.get("state") != "complete":
                self.log(f"swapcopy-patched: nbd-pagesrv's last status before teardown was "
                         f"'{st.get('state')}': fault latencies may miss the last faults")
        if w.stats:
            out["nbd_read_latency_us"] = {k: w.stats["latency_us"][k]
                                          for k in ("p50", "p99", "max")}
        return out

    def _dst_error(self, dst):
        """The destination QEMU's last error lines, for the failure message."""
        try:
            dst.log.flush()
            lines = open(dst.log.name, errors="replace").read().strip().splitlines()
        except (OSError, ValueError):
            return ""
        err = [l for l in lines if "postcopy-swap" in l or "error" in l.lower()]
        return f" (destination: {' | '.join((err or lines)[-2:])[:400]})" if lines else ""

    def collect_after_stop(self, dst, out):
        pass

    def abort(self):
        """Ctrl-C or an error while migrating: cancel on the source (before
        the switch its guest goes on; the destination's load fails and its
        QEMU tears its device down as it exits)."""
        if self.watcher:
            self.watcher.finish()
        if self.migrating and self.src and self.src.alive():
            self.migrating = False
            try:
                switched = self._switched(self.src)
                self.src.qmp.cmd("migrate_cancel", timeout=10)
            except Exception:  # noqa: BLE001 -- stopping the QEMUs follows anyway
                switched = True
            # Before the switch, let the destination notice and exit (it
            # runs its atexit teardown) before the harness stops it; after
            # it, the destination stays up until the harness stops it.
            deadline = time.time() + 30
            while not switched and self.dst and self.dst.alive() and time.time() < deadline:
                time.sleep(0.1)

    def cleanup(self, build):
        """After both QEMUs are gone: wait for setup/teardown scripts the
        destination started (they outlive a killed QEMU), then tear down
        whatever device is left, and end a source exporter that is still
        there (it normally dies with its QEMU: PR_SET_PDEATHSIG)."""
        if not self.swap_name:
            return
        deadline = time.time() + 120
        while time.time() < deadline and _procs_with_args("--name", self.swap_name):
            time.sleep(0.2)
        if os.path.isdir(os.path.join(self.state_dir, self.swap_name)):
            r = subprocess.run([os.path.join(SRC_ROOT, "scripts", "teardown-swap.sh"),
                                "--name", self.swap_name, "--state-dir", self.state_dir],
                               capture_output=True, text=True,
                               env=dict(os.environ, SWAPCOPY_BUILD=build))
            if r.returncode != 0:
                self.log(f"swapcopy-patched: teardown-swap.sh --name {self.swap_name} "
                         f"--state-dir {self.state_dir} failed: {r.stderr.strip()}")
        pid = self.exporter_pid or (self.watcher and self.watcher.exporter_pid)
        if pid:
            try:
                if open(f"/proc/{pid}/comm").read().strip() == "nbd-pagesrv":
                    os.kill(pid, signal.SIGTERM)
                    for _ in range(50):
                        os.kill(pid, 0)
                        time.sleep(0.1)
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.rmdir(self.state_dir)
        except OSError:
            pass


__all__ = ["QemuMode", "SwapcopyMode", "PatchedSwapcopyMode", "ModeFailed", "GuestError"]
