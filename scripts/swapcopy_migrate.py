"""swapcopy-migrate: postcopy-migrate a running QEMU guest through swap,
with the QEMU every Debian user has (stock 7.2).

The source QEMU keeps guest RAM in a shared file (memory-backend-file,
share=on); the destination QEMU waits with -incoming and private anonymous
RAM of the same block name and size. This command prepares the destination
(sets up the swap device with setup-swap.sh and arms its RAM from outside,
swapstub arm --pid --map-later: neither needs the source), exports the
source's RAM with nbd-pagesrv, registers the armed pages with it (swapstub
map), migrates device state only (x-ignore-shared on both sides), lets
the destination's kernel swap the whole RAM in at once (swapstub finish:
each page crosses the device once, fetched from the source on the way,
straight into the destination QEMU), tears the device down, and prints a
summary.

Preparing takes about a second per GiB and can be done ahead, while the
destination waits with -incoming (--prepare-only; a later run without it
finds the prepared destination and only migrates; --unprepare undoes it).

Both QEMUs are driven through their QMP sockets. See docs/migrating-qemu.md.

Between two hosts, each side runs its own command, and the two meet over
the source's exporter (the destination tells it when it is ready):
  destination host: swapcopy-migrate --role destination --dst-qmp D.qmp \
                        --source SRCHOST:4444 --migrate-uri tcp:0.0.0.0:4445
  source host:      swapcopy-migrate --role source --src-qmp S.qmp \
                        --source-listen 0.0.0.0:4444 --migrate-uri tcp:DSTHOST:4445
"""
import argparse
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import pagesrv_control  # noqa: E402
from qmp import QMP, QMPError  # noqa: E402
from swapcopy_agent import SOCKET_NAME, Agent, agent_alive, cmdline_of  # noqa: E402
from swapcopy_source import (MIGRATION_CAPS, Exporter, Failure, SourceSide,  # noqa: E402
                             log, memdev, nbd_uri, open_source, run_migration, save_summary,
                             tls_args)


class JoinedThread(threading.Thread):
    """A thread whose exception join() raises in the caller."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.error = fn, None
        self.start()

    def run(self):
        try:
            self.fn()
        except BaseException as e:          # noqa: B902 - handed to join()
            self.error = e

    def join(self, timeout=None):
        super().join(timeout)
        if self.error is not None:
            e, self.error = self.error, None
            raise e


def process_alive(pid):
    """Running, not exited."""
    return bool(cmdline_of(pid))


def find_pid_by_qmp(path):
    """The process whose command line names this QMP socket."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if any(path.encode() in a for a in args) and any(b"qemu-system" in a for a in args[:1]):
            return int(entry)
    raise Failure(f"no QEMU process found with {path} on its command line: pass --dst-pid")


def find_ram_mapping(pid, size):
    """Host address of the destination's RAM block: QEMU maps each anonymous
    RAM block as one read-write private mapping of exactly its size
    (qemu_ram_mmap, with a guard page after it)."""
    found = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            inode = parts[4]
            name = parts[5] if len(parts) > 5 else ""
            if hi - lo == size and parts[1] == "rw-p" and inode == "0" and not name:
                found.append(lo)
    if len(found) != 1:
        raise Failure(f"expected one anonymous {size >> 20} MiB mapping in process {pid} "
                      f"for the RAM block, found {len(found)}: is the destination's block a "
                      f"memory-backend-ram of the same size as the source's?")
    return found[0]


PREPARE_LOCK = os.environ.get("SWAPCOPY_PREPARE_LOCK", "/run/lock/swapcopy-prepare.lock")


class PrepareLock:
    """Setting a swap device up and arming its region take turns with other
    migrations into this host: a device set up later gets a higher
    priority, and the rest of an arm in progress would go to it
    (setup-swap.sh holds the same lock when run alone)."""

    def __enter__(self):
        os.makedirs(os.path.dirname(PREPARE_LOCK), exist_ok=True)
        self.f = open(PREPARE_LOCK, "a")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another migration's preparation to finish ({PREPARE_LOCK})")
            fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.f.close()


def swapstub_command(build, verb, pid, addr, size, swap, block, swap_type, *extra):
    """swapstub VERB for one armed RAM block. The swap type is the one
    arming learnt: /proc/swaps' order says nothing once a lower type has
    been swapped off."""
    typ = ["--swap-type", str(swap_type)] if swap_type is not None else []
    return [os.path.join(build, "swapstub"), verb, "--pid", str(pid), "--addr", hex(addr),
            "--len", str(size), "--control", swap["CONTROL"], "--device", swap["DEVICE"],
            "--export", block, *typ, *extra]


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise Failure(f"{' '.join(cmd)} failed: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


class Migration:
    def __init__(self, args):
        self.a = args
        self.build = args.build
        self.t = {}
        self.swap = None
        self.src_exporter = None
        self.armed = False
        self.switched = False
        self.swap_type = None
        self.early_map = None
        self.early_map_said = []
        self.exporter_ahead = None
        # Where the destination reaches the source's exporter: the same
        # address it listens on, unless the two are on different hosts.
        self.source_addr = args.source or args.source_listen

    def mark(self, name):
        self.t[name] = time.monotonic()

    def set_switched(self):
        self.switched = True

    def prepared_path(self):
        return os.path.join(self.a.state_dir, self.a.name, "prepared.json")

    def control(self, *words):
        """A request to the destination's nbd-pagesrv."""
        try:
            return pagesrv_control.request(self.swap["CONTROL"], *words)
        except pagesrv_control.ControlError as e:
            raise Failure(str(e)) from e

    def status(self):
        return self.control("status")

    def policy(self, *words):
        self.control("policy", *words)

    def check_destination(self):
        """What preparing needs: a destination waiting with private RAM."""
        a = self.a
        self.dst = QMP(a.dst_qmp)
        d_state = self.dst.cmd("query-status")["status"]
        if d_state != "inmigrate":
            raise Failure(f"destination QEMU is '{d_state}': start it with -incoming")
        dm = memdev(self.dst, a.block)
        if dm.get("share"):
            raise Failure(f"destination block '{a.block}' is shared: it must be private "
                          f"anonymous RAM (memory-backend-ram)")
        self.dst_size = dm["size"]
        self.dst_pid = a.dst_pid or find_pid_by_qmp(a.dst_qmp)

    def check_source_side(self):
        """The source QEMU, checked against the destination; its state."""
        a = self.a
        self.src, s_state, self.size, self.ram_file = open_source(a)
        if self.size != self.dst_size:
            raise Failure(f"block '{a.block}' is {self.size} bytes on the source but "
                          f"{self.dst_size} on the destination")
        self.src_was_running = s_state == "running"
        return s_state

    def check_sides(self):
        self.check_destination()
        s_state = self.check_source_side()
        log(f"source {s_state}, destination waiting; block '{self.a.block}' "
            f"{self.size >> 20} MiB in {self.ram_file}; destination pid {self.dst_pid}")

    def new_exporter(self):
        self.src_exporter = Exporter(self.build, self.a.state_dir, self.a.name, self.a.block,
                                     self.ram_file, self.a.source_listen, tls_args(self.a))
        return self.src_exporter

    def start_exporter_ahead(self):
        """The agent of a destination prepared on the source's host: the
        exporter's process starts now, and learns its RAM file from the
        source's QEMU at `migrate` (spawn_exporter)."""
        self.exporter_ahead = Exporter(self.build, self.a.state_dir, self.a.name, self.a.block,
                                       None, self.a.source_listen, tls_args(self.a))
        self.exporter_ahead.spawn(ahead=True)

    def drop_exporter_ahead(self):
        e, self.exporter_ahead = self.exporter_ahead, None
        if e is not None:
            e.cancel()

    def spawn_exporter(self):
        """The source's exporter: the one started ahead if it was started
        with what this run asks for, else a new one."""
        e = self.exporter_ahead
        if e is not None and e.alive() and e.listen == self.a.source_listen and \
                e.tls == tls_args(self.a) and e.build == self.build:
            self.exporter_ahead = None
            self.src_exporter = e
            e.give(self.a.block, self.ram_file)
            return
        self.drop_exporter_ahead()
        self.new_exporter().spawn()

    def setup_swap(self):
        # The source's exporter need not exist yet (--src-later): so the
        # size is setup-swap.sh's own rule for a source it can ask, four
        # times the RAM plus 256 MiB (swap must stay under half full).
        size = 4 * self.dst_size + (256 << 20)
        out = run([os.path.join(HERE, "setup-swap.sh"), "--src", self.source_addr,
                   "--src-later", "--size", f"{size >> 20}M",
                   "--name", self.a.name, "--state-dir", self.a.state_dir, *tls_args(self.a)],
                  env=dict(os.environ, SWAPCOPY_BUILD=self.build, SWAPCOPY_PREPARE_LOCK_HELD="1"))
        self.swap = dict(l.split("=", 1) for l in out.split("\n") if "=" in l)
        size = self.swap["SIZE"]
        log(f"swap device {self.swap['DEVICE']} "
            f"({str(int(size) >> 20) + ' MiB' if size.isdigit() else size}), "
            f"control {self.swap['CONTROL']}")

    def swapstub(self, verb, *extra):
        return swapstub_command(self.build, verb, self.dst_pid, self.addr, self.dst_size,
                                self.swap, self.a.block, self.swap_type, *extra)

    def arm(self):
        """Arm ahead: the pages are set up as swapped out, but not yet
        registered with nbd-pagesrv (that needs the source's export)."""
        # Nothing may be pulled before the source stops.
        self.policy("background", "off")
        self.addr = find_ram_mapping(self.dst_pid, self.dst_size)
        cmd = self.swapstub("arm", "--map-later")
        # Arming another process ends by checking that the system's swap cache
        # drained; other processes swapping at the same time (e.g. a DAMON
        # page-out scheme) can make it refuse. A refused arm leaves the region
        # zeroed, so it can simply be armed again.
        for attempt in range(1, self.a.arm_attempts + 1):
            try:
                out = run(cmd)
                break
            except Failure as e:
                if attempt == self.a.arm_attempts:
                    raise
                log(f"arming attempt {attempt} refused ({e}); trying again")
                time.sleep(2)
        self.armed = True
        self.arm_report = out.strip()
        words = dict(w.split("=", 1) for w in out.split() if "=" in w)
        self.marker_reads, self.swap_type = words["marker_reads"], int(words["swap_type"])
        log(self.arm_report)

    def prepare(self):
        """Set the destination up for the migration: swap device, armed RAM.
        Needs neither the source QEMU nor its exporter."""
        os.makedirs(self.a.state_dir, exist_ok=True)
        with PrepareLock():
            t0 = time.monotonic()
            self.setup_swap()
            self.arm()
            self.prepare_s = time.monotonic() - t0
        self.prepared_state = {
            "dst_pid": self.dst_pid, "addr": self.addr, "size": self.dst_size,
            "block": self.a.block, "source_listen": self.source_addr, "swap": self.swap,
            "marker_reads": self.marker_reads, "swap_type": self.swap_type,
            "prepare_s": round(self.prepare_s, 3), "prepared_at": time.time()}
        self.save_prepared()
        log(f"destination prepared in {self.prepare_s:.3f} s ({self.dst_size >> 20} MiB armed "
            f"on {self.swap['DEVICE']}); state in {self.prepared_path()}")

    def save_prepared(self, **more):
        self.prepared_state.update(more)
        tmp = self.prepared_path() + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.prepared_state, f, indent=1)
        os.replace(tmp, self.prepared_path())

    def load_prepared(self):
        """The state an earlier --prepare-only left, if it is for this
        destination; None if there is none."""
        try:
            with open(self.prepared_path()) as f:
                st = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise Failure(f"cannot read the prepared state {self.prepared_path()}: {e}; "
                          f"undo it with --unprepare")
        agent = st.get("agent_pid")
        if agent and agent != os.getpid() and agent_alive(agent):
            raise Failure(f"the agent (pid {agent}) that --prepare-only left for this destination "
                          f"is migrating it already, or declined this command (see "
                          f"{os.path.dirname(self.prepared_path())}.agent.log)")
        if st["dst_pid"] != self.dst_pid or st["size"] != self.dst_size or \
                st["block"] != self.a.block or st["source_listen"] != self.source_addr:
            raise Failure(f"{self.prepared_path()} was prepared for destination pid "
                          f"{st['dst_pid']}, block '{st['block']}' of {st['size']} bytes, "
                          f"source {st['source_listen']}, not for this migration (pid "
                          f"{self.dst_pid}, '{self.a.block}', {self.dst_size}, "
                          f"{self.source_addr}): undo it with --unprepare")
        self.swap, self.addr, self.swap_type = st["swap"], st["addr"], st.get("swap_type")
        self.marker_reads, self.prepare_s = st["marker_reads"], st["prepare_s"]
        self.armed = True
        age = time.time() - st["prepared_at"]
        log(f"destination prepared {age:.0f} s ago in {self.prepare_s:.3f} s")
        return st

    def start_early_map(self):
        """A prepared destination: `swapstub map --wait-go` takes hold of
        the armed region (its start and a pagemap read, ~30 ms per 4 GiB)
        while the sides are checked and the exporter starts; map() tells
        it to register, if everything checked matches what it was started
        with. It registers nothing before that."""
        try:
            with open(self.prepared_path()) as f:
                st = json.load(f)
            cmd = swapstub_command(self.build, "map", st["dst_pid"], st["addr"], st["size"],
                                   st["swap"], st["block"], st.get("swap_type"),
                                   "--marker-reads", str(st["marker_reads"]), "--wait-go")
        except (OSError, ValueError, KeyError, TypeError):
            return                  # nothing prepared; or load_prepared() will say why
        self.early_map = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)
        self.early_map_said = []

    def wait_early_map_attached(self, timeout=30):
        """Until the early map has read the region (its 'attached' line, or
        its end if it failed: map_once then says why). Not forever: a map
        that never says so is map_once's to deal with."""
        p = self.early_map
        if p is None:
            return
        if select.select([p.stdout], [], [], timeout)[0]:
            self.early_map_said.append(p.stdout.readline())
        else:
            log(f"swapstub map --wait-go (pid {p.pid}) has not read the region within "
                f"{timeout} s; going on without waiting for it")

    def drop_early_map(self):
        """Its standard input closed without 'go': it exits, mapping nothing."""
        p, self.early_map = self.early_map, None
        if p is not None:
            p.communicate("")

    def map_once(self):
        cmd = self.swapstub("map", "--marker-reads", str(self.marker_reads))
        p = self.early_map
        if p is not None and p.args == cmd + ["--wait-go"]:
            self.early_map = None
            # Done once it says so: its exit (freeing what it read of the
            # region) is not waited for on the way to the switch.
            out = self.early_map_said
            try:
                p.stdin.write("go\n")
                p.stdin.close()
                p.stdin = None              # communicate() below must not flush it
                for line in p.stdout:
                    out.append(line)
                    if line.startswith("mapped "):
                        threading.Thread(target=p.communicate, daemon=True).start()
                        log("the armed region was read while the sides were checked (swapstub "
                            "map --wait-go), and registered now")
                        return "".join(out)
            except OSError:
                pass                        # it is gone: its status says why
            rest, err = p.communicate()
            raise Failure(f"{' '.join(p.args)} failed (status {p.returncode}): "
                          f"{err.strip() or (''.join(out) + rest).strip()}")
        self.drop_early_map()
        return run(cmd)

    def map(self):
        """Register the armed pages with nbd-pagesrv now that the source's
        export exists: milliseconds. Refused if something touched the
        region since it was armed; then arm it again, from scratch."""
        try:
            log(self.map_once().strip())
        except Failure as e:
            log(f"the prepared region cannot be mapped ({e}); arming it again")
            with PrepareLock():
                self.arm()
            log(run(self.swapstub("map", "--marker-reads", str(self.marker_reads))).strip())

    def set_up_migration(self):
        """Capabilities on both sides and the destination listening: needs
        neither the exporter nor the map, so it runs while they start."""
        self.src.cmd("migrate-set-capabilities", capabilities=MIGRATION_CAPS)
        self.set_up_incoming()

    def set_up_incoming(self):
        self.dst.cmd("migrate-set-capabilities", capabilities=MIGRATION_CAPS)
        try:
            self.dst.cmd("migrate-incoming", uri=self.a.migrate_uri)
        except QMPError as e:
            if "already" not in str(e):
                raise

    # ---- two hosts: the destination's side ---------------------------------

    def wait_source_exporter(self):
        """The exporter runs on the source host, started there by
        swapcopy-migrate --role source: wait until it answers."""
        uri = nbd_uri(self.a, self.source_addr, self.a.block)
        deadline = time.monotonic() + self.a.wait_peer
        said = False
        while True:
            try:
                r = subprocess.run(["nbdinfo", "--size", uri], capture_output=True, text=True,
                                   timeout=30)
                if r.returncode == 0:
                    return
                why = r.stderr.strip().splitlines()[-1:] or ["no answer"]
            except subprocess.TimeoutExpired:
                why = ["no answer within 30 s"]
            if time.monotonic() > deadline:
                raise Failure(f"the source's exporter at {self.source_addr} did not answer within "
                              f"{self.a.wait_peer:.0f} s ({why[0]}): is swapcopy-migrate --role "
                              f"source running there, with --source-listen {self.source_addr}?")
            if not said:
                log(f"waiting for the source's exporter at {self.source_addr} (swapcopy-migrate "
                    f"--role source there)")
                said = True
            time.sleep(0.2)

    def wait_incoming(self):
        """Ready and told: the source migrates when its operator (or its
        swapcopy-migrate) does. Wait for the guest to arrive and resume."""
        deadline = time.monotonic() + self.a.wait_peer
        while True:
            st = self.dst.cmd("query-status")["status"]
            if st != "inmigrate":
                break
            m = self.dst.cmd("query-migrate")
            if m.get("status") == "active" and "migrate" not in self.t:
                self.mark("migrate")       # the stream began: the source is about to stop
            if m.get("status") == "failed":
                raise Failure("the incoming migration failed: see the destination QEMU's log")
            if time.monotonic() > deadline:
                raise Failure(f"no migration arrived within {self.a.wait_peer:.0f} s")
            time.sleep(0.002)
        if "migrate" not in self.t:
            self.mark("migrate")
        self.mark("switched")
        self.switched = True
        self.mark("dst_running")
        self.src_was_running = st == "running"
        self.downtime_ms = None            # the source's figure: see its summary
        log(f"the guest arrived and is {st}")

    def run_destination(self):
        self.mark("start")
        os.makedirs(self.a.state_dir, exist_ok=True)
        self.check_destination()
        self.size = self.dst_size
        self.prepared_ahead = self.load_prepared() is not None
        if not self.prepared_ahead:
            self.prepare()
        self.mark("prepared")
        self.set_up_incoming()
        self.wait_source_exporter()
        self.map()
        self.control("tell-source", "ready")
        self.mark("ready")
        log(f"ready: told the source at {self.source_addr}; waiting for the migration")
        self.wait_incoming()
        # As in migrate(): the source has stopped; land everything now.
        self.policy("land", "on")
        self.policy("background", "on")
        self.land()
        self.finish()
        return self.summary()

    def migrate(self):
        m = run_migration(self.src, self.a.migrate_uri, self.mark, self.set_switched)
        self.downtime_ms = m.get("downtime")
        # The source has stopped. Land mode: the kernel pulls the RAM in
        # itself (swapstub land, below), and each page nbd-pagesrv fetches
        # goes straight to it, not into nbd-pagesrv's store; the background
        # stream only settles the pages the source reports as zero.
        self.policy("land", "on")
        self.policy("background", "on")
        want = "running" if self.src_was_running else "paused"
        while self.dst.cmd("query-status")["status"] != want:
            time.sleep(0.002)
        self.mark("dst_running")
        log(f"switched over: downtime {self.downtime_ms} ms; destination {want}")

    def land(self):
        """Swap the whole region in right away, in big asynchronous batches
        (swapstub finish: MADV_WILLNEED ahead, reads behind): every page
        crosses the device once, straight into the destination QEMU, while
        the guest runs. Progress from nbd-pagesrv meanwhile."""
        cmd = [os.path.join(self.build, "swapstub"), "finish", "--pid", str(self.dst_pid),
               "--addr", hex(self.addr), "--len", str(self.size), "--control",
               self.swap["CONTROL"], "--device", self.swap["DEVICE"], "--no-wait", "--quiet"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        last = 0
        while True:
            done = proc.poll() is not None
            st = self.status()
            p = st["pages"]
            arrived = p["total"] - p["remote"]
            now = time.monotonic()
            if "all_landed" not in self.t and p["remote"] == 0:
                self.mark("all_landed")
            if done or now - last >= self.a.progress_interval:
                log(f"pages in {arrived}/{p['total']} ({100 * arrived // max(p['total'], 1)}%)"
                    f", {p['landed']} landed in the guest, demand {p['demand']}, zero {p['zero']}, "
                    f"{st['rate_mib_s']:.0f} MiB/s, ETA {st['eta_s']:.1f} s, state {st['state']}")
                last = now
            if done:
                break
            time.sleep(0.1)
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise Failure(f"{' '.join(cmd)} failed: {err.strip() or out.strip()}")
        self.mark("landed")
        self.final_status = st
        if "all_landed" not in self.t:
            log(f"every page of the region was swapped in, but nbd-pagesrv still has "
                f"{st['pages']['remote']} remote slots outside it")
            self.mark("all_landed")

    def finish(self):
        self.stats = self.control("stats")
        # Until the device is detached the kernel may read a landed page
        # again (it dropped a clean copy), so the source is needed until then.
        self.teardown()
        self.mark("all_local")
        self.mark("finished")

    def teardown(self, force=False):
        if self.swap or force:
            t0 = time.monotonic()
            r = subprocess.run([os.path.join(HERE, "teardown-swap.sh"), "--name", self.a.name,
                                "--state-dir", self.a.state_dir], capture_output=True, text=True)
            if r.returncode != 0:
                log(f"teardown failed: {r.stderr.strip()}")
            else:
                self.swap = None
                log(f"swap device detached in {time.monotonic() - t0:.3f} s {r.stderr}")
        if self.src_exporter:
            self.src_exporter.stop()
        self.drop_exporter_ahead()

    def summary(self):
        t = self.t
        st, stats = self.final_status, self.stats
        fl = st["fetch_latency_us"]
        s = {
            "ram_mib": self.size >> 20,
            "downtime_ms": self.downtime_ms,
            "switchover_s": round(t["dst_running"] - t["migrate"], 4),
            # Preparation (device set-up, arming), ahead or in this run;
            # pre_switch_s: this run's start (after any preparation) to the
            # switch; arm_s (kept for older readers): start to migrate.
            "prepare_s": round(self.prepare_s, 3),
            "prepared_ahead": self.prepared_ahead,
            "pre_switch_s": round(t["switched"] - t["migrate"], 3) if self.a.role == "destination"
            else round(t["switched"] - t["prepared"], 3)
            if self.prepared_ahead else round(t["switched"] - t["start"], 3),
            "arm_s": round(t["migrate"] - t["start"], 3),
            "time_to_all_landed_s": round(t["all_landed"] - t["migrate"], 3),
            "time_to_all_local_s": round(t["all_local"] - t["migrate"], 3),
            "total_s": round(t["finished"] - t["migrate"], 3),
            "pages": st["pages"],
            "bytes_fetched": st["bytes_fetched"],
            "fault_fetch_latency_us": {k: fl[k] for k in ("count", "p50", "p90", "p99", "max")},
            "nbd_read_latency_us": {k: stats["latency_us"][k] for k in ("p50", "p99", "max")},
            "reconnects": st["reconnects"],
            # The same moments on the wall clock, to line several
            # migrations up against each other.
            "epoch": {k: round(v + time.time() - time.monotonic(), 3) for k, v in t.items()},
        }
        print("swapcopy migration summary" +
              (" (destination side)" if self.a.role == "destination" else ""))
        print(f"  RAM                  {s['ram_mib']} MiB (block '{self.a.block}')")
        print(f"  preparation          {s['prepare_s']:.3f} s (swap device and arming"
              f"{', done ahead' if self.prepared_ahead else ', in this run'}; the guest kept running)")
        print(f"  migrate -> switch    {s['pre_switch_s']:.3f} s (exporter, map, device state)")
        if s["downtime_ms"] is not None:
            print(f"  downtime             {s['downtime_ms']} ms (QEMU's figure, source side)")
        else:
            print("  downtime             see the source's summary (QEMU's figure is the source's)")
        print(f"  switchover           {s['switchover_s'] * 1000:.1f} ms (migrate -> destination running)")
        print(f"  time to all-landed   {s['time_to_all_landed_s']:.3f} s (every page crossed once, into the guest)")
        print(f"  source needed for    {s['time_to_all_local_s']:.3f} s (migrate -> device detached)")
        print(f"  total                {s['total_s']:.3f} s (migrate -> device detached)")
        p = s["pages"]
        print(f"  pages                {p['total']}: {p['demand']} on demand, {p['streamed']} streamed, "
              f"{p['zero']} zero (not transferred)")
        print(f"  bytes from source    {s['bytes_fetched'] / 1048576:.1f} MiB")
        print(f"  demand fetch latency p50 {fl['p50']} us, p90 {fl['p90']} us, p99 {fl['p99']} us, "
              f"max {fl['max']} us over {fl['count']} faults")
        if fl["buckets"]:
            print("  fault histogram      " + ", ".join(f"<={u}us:{n}" for u, n in fl["buckets"]))
        return save_summary(self.a, s)

    def run(self):
        self.mark("start")
        os.makedirs(self.a.state_dir, exist_ok=True)
        self.start_early_map()
        self.check_sides()
        self.prepared_ahead = self.load_prepared() is not None
        if self.prepared_ahead:
            return self.migrate_prepared()
        # The exporter first: a source that cannot export fails before
        # anything is set up on the destination.
        self.new_exporter().start()
        self.prepare()
        self.mark("prepared")
        self.set_up_migration()
        self.map()
        self.mark("mapped")
        self.migrate()
        self.land()
        self.finish()
        return self.summary()

    def migrate_prepared(self, destination_ready=None):
        """The destination is prepared and both sides are checked: the
        source's exporter, the map, the switch; then the landing.
        destination_ready: a thread setting the destination's side up
        meanwhile (run_prepared), joined before the map."""
        self.mark("prepared")
        # Its answer is read just before `migrate`: the busy source QEMU
        # answers while the exporter starts and the pages are registered.
        self.src.send("migrate-set-capabilities", capabilities=MIGRATION_CAPS)
        self.spawn_exporter()
        if destination_ready is None:
            self.set_up_incoming()
        else:
            destination_ready.join()
        self.mark("capabilities")
        self.src_exporter.wait_listening()
        self.mark("exporter")
        self.map()
        self.mark("mapped")
        self.src.reply("migrate-set-capabilities")
        self.migrate()
        self.land()
        self.finish()
        return self.summary()

    def run_prepared(self):
        """In the agent --prepare-only left (swapcopy_agent.py), told to
        migrate: the destination was checked and prepared by this process,
        and the early map holds the region. The destination's QMP steps
        run in a thread while the source is checked and its exporter
        starts: the two QEMUs answer at once, not one after the other."""
        self.t = {}
        self.mark("start")
        a = self.a
        self.prepared_ahead = True
        dst = JoinedThread(self.ready_destination)
        try:
            s_state = self.check_source_side()
            log(f"source {s_state}; block '{a.block}' {self.size >> 20} MiB in {self.ram_file}; "
                f"destination pid {self.dst_pid}, prepared "
                f"{time.time() - self.prepared_state['prepared_at']:.0f} s ago in "
                f"{self.prepare_s:.3f} s (its agent, pid {os.getpid()}, migrates)")
            return self.migrate_prepared(destination_ready=dst)
        finally:
            # On a failure before the join: the destination's steps end
            # before anything is undone (their own failure is not the one
            # reported).
            threading.Thread.join(dst)

    def ready_destination(self):
        """Still waiting with -incoming, and listening for the migration."""
        self.dst = QMP(self.a.dst_qmp)
        d_state = self.dst.cmd("query-status")["status"]
        if d_state != "inmigrate":
            raise Failure(f"destination QEMU is '{d_state}', no longer waiting with -incoming: "
                          f"undo the preparation with --unprepare")
        self.set_up_incoming()

    def run_prepare_only(self, parser):
        self.check_destination()
        if os.path.exists(self.prepared_path()):
            raise Failure(f"{self.prepared_path()} exists: this destination is prepared "
                          f"already (undo it with --unprepare)")
        try:
            self.prepare()
        except BaseException:
            self.teardown()
            raise
        # QEMU serves one QMP client at a time: the agent connects again
        # when it migrates.
        self.dst.close()
        try:
            agent = f"its agent (pid {Agent(self, parser).start()}) waits for it"
        except OSError as e:
            # Still prepared: a migration then runs without the agent's head
            # start (~0.1 s more between the command and the switch).
            log(str(e))
            agent = "no agent waits for it"
        print(f"prepared {self.dst_size >> 20} MiB in {self.prepare_s:.3f} s; {agent}: now run "
              f"swapcopy-migrate with the same --name, --state-dir and --source-listen, "
              f"and --src-qmp")

    def stop_agent(self, st):
        """The agent --prepare-only left, told to go (SIGTERM) before its
        preparation is undone; refused while it migrates."""
        pid = st.get("agent_pid")
        if not pid or not agent_alive(pid):
            return
        if not os.path.exists(os.path.join(os.path.dirname(self.prepared_path()), SOCKET_NAME)):
            raise Failure(f"the agent (pid {pid}) of this prepared destination is migrating it: "
                          f"interrupt that swapcopy-migrate (Ctrl-C) to cancel the migration")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while agent_alive(pid):
            if time.monotonic() > deadline:
                raise Failure(f"the agent (pid {pid}) of this prepared destination did not exit "
                              f"within 30 s of SIGTERM: see "
                              f"{os.path.dirname(self.prepared_path())}.agent.log")
            time.sleep(0.01)

    def run_unprepare(self):
        """Undo a preparation that will not be used: the destination's RAM
        becomes zeros again (plain memory, as a fresh -incoming QEMU has it),
        the device and its daemon go."""
        try:
            with open(self.prepared_path()) as f:
                st = json.load(f)
        except FileNotFoundError:
            st = None
        if st and os.getpid() != st.get("agent_pid"):
            self.stop_agent(st)
        if st:
            self.swap, self.addr, self.dst_size = st["swap"], st["addr"], st["size"]
            self.dst_pid, self.swap_type = st["dst_pid"], st.get("swap_type")
            if process_alive(self.dst_pid):
                try:
                    log(run(self.swapstub("disarm")).strip())
                except Failure:
                    if process_alive(self.dst_pid):
                        raise
                    log(f"the destination QEMU (pid {self.dst_pid}) exited meanwhile: its RAM "
                        f"went with it")
        self.swap = self.swap or {}
        self.swap.setdefault("name", self.a.name)
        self.teardown(force=True)
        print("destination unprepared" if st else "nothing was prepared; any device torn down")

    def abort(self, why):
        log(f"FAILED: {why}")
        self.drop_early_map()
        if not self.switched:
            try:
                self.src.cmd("migrate_cancel")
            except Exception:
                pass
            if self.armed:
                # Zeros again, as a fresh -incoming QEMU's RAM, before the
                # device goes (swapoff would read the markers back in).
                try:
                    if not os.path.exists(f"/proc/{self.dst_pid}"):
                        raise Failure("it has exited")
                    run(self.swapstub("disarm"))
                    log("the destination QEMU's armed RAM is zeros again; the source is "
                        "unchanged")
                except (Failure, OSError, AttributeError) as e:
                    log(f"the destination QEMU's RAM was armed and could not be disarmed "
                        f"({e}): quit it; the source is unchanged")
        else:
            log("the guest runs on the destination; pages still missing are served while "
                "nbd-pagesrv and the source exporter stay up: NOT tearing down")
            return
        self.teardown()


def build_parser():
    # No abbreviated options: swapcopy-handoff finds --name and
    # --state-dir on the command line without this parser.
    ap = argparse.ArgumentParser(prog="swapcopy-migrate", allow_abbrev=False,
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", choices=("both", "source", "destination"), default="both",
                    help="both sides on this host (default), or this host's side of a "
                         "migration between two hosts")
    ap.add_argument("--src-qmp", help="source QEMU's QMP socket")
    ap.add_argument("--dst-qmp", help="destination QEMU's QMP socket")
    ap.add_argument("--dst-pid", type=int, help="destination QEMU's pid (found from --dst-qmp)")
    ap.add_argument("--block", default="mem", help="RAM block / memory backend id (default mem)")
    ap.add_argument("--src-ram", help="source RAM file (default: the backend's mem-path)")
    ap.add_argument("--source-listen", default="127.0.0.1:4444",
                    help="where the source's nbd-pagesrv listens (default 127.0.0.1:4444)")
    ap.add_argument("--source",
                    help="where the destination reaches that exporter (default: "
                         "--source-listen; --role destination: the source host's address)")
    ap.add_argument("--migrate-uri", default="tcp:127.0.0.1:4445",
                    help="migration stream URI, where the destination listens (default "
                         "tcp:127.0.0.1:4445)")
    ap.add_argument("--tls-psk", metavar="FILE",
                    help="TLS on the source link with this pre-shared key (psktool's format), "
                         "the same file on both sides (docs/security.md)")
    ap.add_argument("--tls-certificates", metavar="DIR",
                    help="TLS with X.509 instead: ca-cert.pem plus server-cert.pem/-key.pem "
                         "(source) and client-cert.pem/-key.pem (destination)")
    ap.add_argument("--tls", choices=("require", "on", "off"),
                    help="nbd-pagesrv's --tls (default: require with a key or certificates)")
    ap.add_argument("--wait-peer", type=float, default=600,
                    help="two hosts: seconds to wait for the other side (default 600)")
    ap.add_argument("--name", default="swapcopy", help="swap device name (setup-swap.sh --name)")
    ap.add_argument("--state-dir", default="/run/swapcopy", help="state directory")
    ap.add_argument("--build", default=os.environ.get("SWAPCOPY_BUILD",
                                                      os.path.join(HERE, "..", "build")))
    ap.add_argument("--progress-interval", type=float, default=1.0)
    ap.add_argument("--arm-attempts", type=int, default=5,
                    help="times to try arming before giving up (default 5)")
    ap.add_argument("--json", help="also write the summary as JSON to this file")
    ap.add_argument("--prepare-only", action="store_true",
                    help="only prepare the destination (swap device, armed RAM) and exit; a "
                         "later run with the same --name/--state-dir migrates")
    ap.add_argument("--unprepare", action="store_true",
                    help="undo a --prepare-only whose migration will not happen")
    return ap


def execute(m, a, step):
    """Run one of Migration's steps with swapcopy-migrate's exit statuses:
    a migration that fails or is interrupted before the switch is undone."""
    quiet = a.unprepare or a.prepare_only
    try:
        step()
    except (Failure, QMPError, OSError) as e:
        if quiet:
            log(f"FAILED: {e}")
        else:
            m.abort(str(e))
        return 1
    except KeyboardInterrupt:
        if not quiet:
            m.abort("interrupted")
        return 130
    return 0


def main():
    ap = build_parser()
    a = ap.parse_args()
    if a.role == "source":
        if not a.src_qmp or a.dst_qmp or a.prepare_only or a.unprepare:
            ap.error("--role source takes --src-qmp, and no --dst-qmp, --prepare-only or "
                     "--unprepare (those are the destination's)")
    elif a.role == "destination":
        if a.src_qmp or not (a.dst_qmp or a.unprepare) or not (a.source or a.unprepare):
            ap.error("--role destination takes --dst-qmp and --source SRCHOST:PORT (the source "
                     "host's exporter), and no --src-qmp")
    else:
        if not a.prepare_only and not a.unprepare and not a.src_qmp:
            ap.error("--src-qmp is needed (except with --prepare-only or --unprepare)")
        if not a.unprepare and not a.dst_qmp:
            ap.error("--dst-qmp is needed")
    if a.role == "source":
        # Needs no root: it only reads the RAM file and drives QMP.
        side = SourceSide(a)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            side.run()
        except (Failure, QMPError, OSError) as e:
            side.abort(str(e))
            return 1
        except KeyboardInterrupt:
            side.abort("interrupted")
            return 130
        return 0
    if os.geteuid() != 0:
        log("must run as root (swap, loop devices, process_madvise)")
        return 2
    m = Migration(a)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if a.unprepare:
        return execute(m, a, m.run_unprepare)
    if a.prepare_only:
        return execute(m, a, lambda: m.run_prepare_only(ap))
    return execute(m, a, m.run_destination if a.role == "destination" else m.run)


if __name__ == "__main__":
    sys.exit(main())
