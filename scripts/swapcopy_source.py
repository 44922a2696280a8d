"""The source's side of a swapcopy migration: the RAM exporter, and the
source host's half of a migration between two hosts (swapcopy-migrate
--role source). Imported by scripts/swapcopy-migrate."""
import json
import os
import subprocess
import sys
import time

import pagesrv_control
from qmp import QMP, QMPError


class Failure(Exception):
    pass


def log(msg):
    print(f"swapcopy-migrate: {msg}", file=sys.stderr, flush=True)


def tls_args(a):
    """nbd-pagesrv's (and setup-swap.sh's) options for TLS on the source
    link, as swapcopy-migrate was given them."""
    out = []
    if a.tls_psk:
        out += ["--tls-psk", os.path.abspath(a.tls_psk)]
    if a.tls_certificates:
        out += ["--tls-certificates", os.path.abspath(a.tls_certificates)]
    if a.tls:
        out += ["--tls", a.tls]
    return out


def nbd_uri(a, hostport, export):
    """A URI libnbd's tools (nbdinfo) reach the source's export by, over TLS
    if the link uses it."""
    if a.tls_psk:
        with open(a.tls_psk) as f:
            user = f.readline().split(":", 1)[0]
        return (f"nbds://{user}@{hostport}/{export}?tls-psk-file="
                f"{os.path.abspath(a.tls_psk)}")
    if a.tls_certificates:
        return (f"nbds://{hostport}/{export}?tls-certificates="
                f"{os.path.abspath(a.tls_certificates)}")
    return f"nbd://{hostport}/{export}"


def find_memdev(memdevs, path, block):
    for m in memdevs:
        if m.get("id") == block:
            return m
    raise Failure(f"{path}: no memory backend '{block}' (start QEMU with "
                  f"-machine memory-backend={block})")


def memdev(q, block):
    return find_memdev(q.cmd("query-memdev"), q.path, block)


# Device state only: the RAM stays in the shared file the exporter serves
# (source) and arrives through the swap device (destination).
MIGRATION_CAPS = [{"capability": "x-ignore-shared", "state": True}]


def open_source(a):
    """Connect to the source QEMU, which must be running or paused, its RAM
    block a shared file. The three questions go out with the connection.
    Returns (QMP, state, size in bytes, the RAM file)."""
    asked = [("query-status", {}), ("query-memdev", {})]
    if not a.src_ram:
        asked.append(("qom-get", {"path": f"/objects/{a.block}", "property": "mem-path"}))
    src = QMP(a.src_qmp, first=asked)
    # query-status and query-memdev must answer; qom-get's error (a block
    # that is no file) is reported below, after the clearer checks.
    for answer in src.first[:2]:
        if isinstance(answer, QMPError):
            raise answer
    st = src.first[0]["status"]
    if st not in ("running", "paused"):
        raise Failure(f"source QEMU is '{st}', not running or paused")
    m = find_memdev(src.first[1], src.path, a.block)
    if not m.get("share"):
        raise Failure(f"source block '{a.block}' is not share=on: its RAM must be a shared "
                      f"file (memory-backend-file,share=on,mem-path=/dev/shm/...)")
    ram_file = a.src_ram or src.first[2]
    if isinstance(ram_file, QMPError):
        raise ram_file
    return src, st, m["size"], ram_file


def save_summary(a, s):
    """The summary also as JSON, if --json asked for it; returns it."""
    if a.json:
        with open(a.json, "w") as f:
            json.dump(s, f, indent=1)
    return s


def run_migration(src, uri, mark, on_switched):
    """migrate to uri and wait until QEMU says completed: mark("migrate")
    and mark("switched") at those moments, on_switched() right after.
    Returns the last query-migrate, with the downtime and total time QEMU
    7.2 may fill in a moment after 'completed'."""
    mark("migrate")
    src.cmd("migrate", uri=uri)
    while True:
        m = src.cmd("query-migrate")
        st = m.get("status")
        if st == "completed":
            break
        if st in ("failed", "cancelled"):
            raise Failure(f"migration {st}: {m.get('error-desc', '')}")
        time.sleep(0.005)
    mark("switched")
    on_switched()
    for _ in range(200):
        if "total-time" in m and "downtime" in m:
            break
        time.sleep(0.005)
        m = src.cmd("query-migrate")
    return m


class Exporter:
    """nbd-pagesrv serving the source's RAM file read-only. It exits by
    itself once a destination has said it has every page and every client
    has gone (--exit-when-idle); its control socket tells whether a
    destination on another host has said it is ready."""

    def __init__(self, build, state_dir, name, block, ram_file, listen, tls=()):
        self.build, self.block, self.ram_file, self.listen = build, block, ram_file, listen
        self.tls = list(tls)
        # Beside the destination's state directory of the same name (which
        # setup-swap.sh creates, and refuses if it exists): several
        # migrations may share the state directory.
        self.log_path = os.path.join(state_dir, f"{name}.exporter.log")
        self.control = os.path.join(state_dir, f"{name}.exporter.ctl")
        self.proc = None

    def spawn(self, ahead=False):
        """ahead: before the RAM file is known (a prepared destination's
        agent): the process starts, and waits for give() before it opens
        anything or listens."""
        export = ["--exports-on-stdin"] if ahead else ["--export", f"{self.block}={self.ram_file}"]
        with open(self.log_path, "w") as logf:
            self.proc = subprocess.Popen(
                [os.path.join(self.build, "nbd-pagesrv"), *export, "--listen", self.listen,
                 "--control", self.control, "--exit-when-idle", "--no-mlock", *self.tls],
                stdin=subprocess.PIPE if ahead else None, stdout=logf, stderr=logf,
                start_new_session=True)

    def give(self, block, ram_file):
        """The export of an exporter spawned ahead: it serves it now."""
        self.block, self.ram_file = block, ram_file
        try:
            self.proc.stdin.write(f"{block}={ram_file}\n\n".encode())
            self.proc.stdin.close()
        except OSError as e:
            raise Failure(f"the source exporter started ahead (pid {self.proc.pid}) cannot be "
                          f"given its export: {e.strerror}; see {self.log_path}") from e

    def cancel(self):
        """An exporter spawned ahead that will not be needed: told nothing,
        it exits serving nothing."""
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        self.stop()

    def wait_listening(self):
        # Ready once it says it listens (it logs that after listen()
        # succeeded), and has its control socket, which comes a moment
        # later: stats() right after must not find it missing. Probing with
        # a client instead would hang on whatever else might hold the port
        # and accept without answering. A prepared destination waits on
        # nothing else before the switch: poll often.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(self.log_path) as f:
                said = f.read()
            if f"serving NBD on TCP {self.listen}" in said and \
                    f"control socket {self.control}" in said:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.002)
        with open(self.log_path) as f:
            said = " / ".join(f.read().strip().splitlines()[-3:]) or "it printed nothing"
        state = "no word of listening within 10 s" if self.proc.poll() is None else \
            f"exited with status {self.proc.returncode}"
        raise Failure(f"the source exporter on {self.listen} did not start ({state}): "
                      f"{said}; full log in {self.log_path}")

    def start(self):
        self.spawn()
        self.wait_listening()

    def stats(self):
        try:
            return pagesrv_control.request(self.control, "stats")
        except pagesrv_control.ControlError as e:
            raise Failure(f"the source exporter's stats: {e}") from e

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace=5):
        """Wait for it to exit by itself (--exit-when-idle), then stop it."""
        if not self.alive():
            return
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait()


class SourceSide:
    """swapcopy-migrate --role source: on the source host, export the
    guest's RAM, wait until the destination host says it is ready (armed
    and registered: swapcopy-migrate --role destination there), migrate
    device state, then serve pages until the destination has them all."""

    def __init__(self, a):
        self.a = a
        self.t = {}
        self.exporter = None
        self.switched = False

    def mark(self, name):
        self.t[name] = time.monotonic()

    def set_switched(self):
        self.switched = True

    def check(self):
        a = self.a
        self.src, st, self.size, self.ram_file = open_source(a)
        log(f"source {st}; block '{a.block}' {self.size >> 20} MiB in {self.ram_file}")

    def wait_ready(self):
        deadline = time.monotonic() + self.a.wait_peer
        log(f"exporting on {self.a.source_listen}; waiting for the destination to say it is "
            f"ready (swapcopy-migrate --role destination --source ADDRESS-OF-THIS-HOST:PORT "
            f"there)")
        while not self.exporter.stats().get("destination_ready"):
            if not self.exporter.alive():
                raise Failure(f"the source exporter exited; see {self.exporter.log_path}")
            if time.monotonic() > deadline:
                raise Failure(f"the destination did not say it is ready within "
                              f"{self.a.wait_peer:.0f} s")
            time.sleep(0.01)
        self.mark("ready")

    def migrate(self):
        self.src.cmd("migrate-set-capabilities", capabilities=MIGRATION_CAPS)
        m = run_migration(self.src, self.a.migrate_uri, self.mark, self.set_switched)
        self.downtime_ms = m.get("downtime")
        log(f"switched over: downtime {self.downtime_ms} ms; serving pages until the "
            f"destination has them all")

    def serve(self):
        last, st = 0, {}
        while self.exporter.alive():
            try:
                st = self.exporter.stats()
            except Failure as e:
                # An exporter done with its clients removes its control
                # socket just before it exits: give it time to.
                try:
                    self.exporter.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    raise e from None
                break
            now = time.monotonic()
            if now - last >= self.a.progress_interval:
                log(f"served {st['bytes']['read'] / 1048576:.0f} MiB to "
                    f"{st['connections']['current']} connections"
                    f"{'; the destination has every page' if st.get('destination_done') else ''}")
                last = now
            self.served = st["bytes"]["read"]
            time.sleep(0.1)
        if self.exporter.proc.returncode != 0:
            raise Failure(f"the source exporter exited with status "
                          f"{self.exporter.proc.returncode}; see {self.exporter.log_path}")
        self.mark("done")

    def summary(self):
        t = self.t
        s = {"role": "source", "ram_mib": self.size >> 20, "downtime_ms": self.downtime_ms,
             "migrate_to_switch_s": round(t["switched"] - t["migrate"], 4),
             "waited_for_destination_s": round(t["ready"] - t["start"], 3),
             "source_needed_s": round(t["done"] - t["migrate"], 3),
             "bytes_served": getattr(self, "served", 0)}
        print("swapcopy migration summary (source side)")
        print(f"  RAM                  {s['ram_mib']} MiB (block '{self.a.block}')")
        print(f"  waited for the destination {s['waited_for_destination_s']:.3f} s (its "
              f"preparation and registration)")
        print(f"  migrate -> switch    {s['migrate_to_switch_s']:.3f} s")
        print(f"  downtime             {s['downtime_ms']} ms (QEMU's figure)")
        print(f"  source needed for    {s['source_needed_s']:.3f} s (migrate -> the "
              f"destination has every page)")
        print(f"  bytes served         {s['bytes_served'] / 1048576:.1f} MiB")
        return save_summary(self.a, s)

    def run(self):
        self.mark("start")
        os.makedirs(self.a.state_dir, exist_ok=True)
        self.check()
        self.exporter = Exporter(self.a.build, self.a.state_dir, self.a.name, self.a.block,
                                 self.ram_file, self.a.source_listen, tls_args(self.a))
        self.exporter.start()
        self.wait_ready()
        self.migrate()
        self.serve()
        return self.summary()

    def abort(self, why):
        log(f"FAILED: {why}")
        if self.switched:
            if self.exporter and self.exporter.alive():
                log(f"the guest runs on the destination and may still need pages: the "
                    f"exporter (pid {self.exporter.proc.pid}) keeps serving and exits by "
                    f"itself once the destination has them all")
            return
        try:
            self.src.cmd("migrate_cancel")
        except Exception:
            pass
        if self.exporter and self.exporter.alive():
            self.exporter.proc.terminate()
            self.exporter.proc.wait()
        log("the source is unchanged")
