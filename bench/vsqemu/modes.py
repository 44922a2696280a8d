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
        for e in os.listdir("/proc"):
            if not e.isdigit():
                continue
            try:
                with open(f"/proc/{e}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if self.export_arg in args and any(a.endswith(b"nbd-pagesrv") for a in args[:1]):
                return int(e)
        return None

    def _loop(self):
        tick = 0
        while not self.stop:
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
        self.thread.join(timeout=2)


def wait_swap_slot(timeout, log):
    """swapcopy needs priority 32767 alone; other sessions' tests on this
    machine use it too. Wait for it to be free instead of failing."""
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
        self.state_dir = self.swap_name = None

    def migrate(self, src, dst, run_dir, build):
        wait_swap_slot(self.slot_timeout, self.log)
        self.state_dir = os.path.join(run_dir, "swapcopy-state")
        self.swap_name = f"vsq{os.getpid()}-{os.path.basename(run_dir)[:20]}"
        summary = os.path.join(run_dir, "swapcopy-summary.json")
        listen = f"127.0.0.1:{free_port()}"
        cmd = [os.path.join(SRC_ROOT, "scripts", "swapcopy-migrate"),
               "--src-qmp", src.ctl_qmp, "--dst-qmp", dst.ctl_qmp, "--dst-pid", str(dst.pid),
               "--name", self.swap_name, "--state-dir", self.state_dir,
               "--source-listen", listen, "--migrate-uri", f"tcp:127.0.0.1:{free_port()}",
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
                "arm_s": s["arm_s"], "total_s": s["arm_s"] + s["total_s"],
                "after_migrate_s": s["total_s"], "all_local_s": s["time_to_all_local_s"],
                # device-state migration's own RAM bytes (ROMs, ACPI) + pages pulled
                "wire_bytes": s["bytes_fetched"] + m.get("ram", {}).get("transferred", 0),
                "bytes_fetched": s["bytes_fetched"], "pages": s["pages"],
                "faults": fl["count"], "fault_p50_us": fl["p50"], "fault_p99_us": fl["p99"],
                "fault_max_us": fl["max"], "nbd_read_latency_us": s["nbd_read_latency_us"],
                "pagesrv_hwm_kib": poller.pagesrv_kib, "exporter_hwm_kib": poller.exporter_kib,
                "t_done": t_done}

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


class PatchedSwapcopyMode:
    """HOOK(qemu-patches): swapcopy with the patched QEMU of qemu-patches/
    (source RAM private, served by QEMU itself; no arming from outside).
    Not implemented yet: whoever lands qemu-patches/ fills migrate() in with
    its driver and adds the mode to MODES in bench/vs-qemu-postcopy. The
    harness measures everything else (events, PASS lines, VmHWM) the same
    way as for the other modes; migrate() must return at least downtime_ms,
    total_s, wire_bytes, t_done and, if it can, fault_p50_us/fault_p99_us."""

    name = "swapcopy-patched"

    def __init__(self, qemu_binary):
        self.qemu_binary = qemu_binary

    def migrate(self, src, dst, run_dir, build):
        raise ModeFailed("swapcopy-patched: not implemented yet (HOOK(qemu-patches) in "
                         "bench/vsqemu/modes.py)")

    def collect_after_stop(self, dst, out):
        pass


__all__ = ["QemuMode", "SwapcopyMode", "PatchedSwapcopyMode", "ModeFailed", "GuestError"]
