"""The local swap-in floor, measured in the same run: build/bench/local-swapin
paging its own memory out to a loop device on a tmpfs file (no network, no
daemon) and timing first touches. Everything set up here is undone in a
finally block, also on Ctrl-C."""
import json
import os
import subprocess
import time


class FloorError(Exception):
    pass


def _sh(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise FloorError(f"{' '.join(cmd)} failed: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.strip()


def _top_priority_taken():
    with open("/proc/swaps") as f:
        return [line.split()[0] for line in f.readlines()[1:]
                if len(line.split()) >= 5 and int(line.split()[4]) >= 32767]


def measure(build, log, mib=256, faults=2000, wait_s=300):
    prog = os.path.join(build, "bench", "local-swapin")
    if not os.access(prog, os.X_OK):
        raise FloorError(f"{prog} missing: run make")
    # Only while no swapcopy device (ours or another session's) is active:
    # ours must take every page, and a swapcopy device must never share
    # the top priority with another.
    deadline = time.time() + wait_s
    while _top_priority_taken():
        if time.time() > deadline:
            raise FloorError(f"swap priority 32767 taken by {_top_priority_taken()} for {wait_s} s")
        time.sleep(1)
    shm = f"/dev/shm/vsqemu-floor-{os.getpid()}.swap"
    loop = None
    on = False
    try:
        with open(shm, "w") as f:
            f.truncate(4 * mib << 20)
        loop = _sh(["losetup", "-f", "--show", shm])
        _sh(["mkswap", loop])
        _sh(["swapon", "-p", "32767", loop])
        on = True
        out = _sh([prog, "--mib", str(mib), "--faults", str(faults)])
        res = json.loads(out.splitlines()[-1])
        res["device"] = f"loop on tmpfs ({mib} MiB region)"
        return res
    finally:
        if on:
            r = subprocess.run(["swapoff", loop], capture_output=True, text=True)
            if r.returncode != 0:
                # Keep the loop and file: detaching a device still in use
                # as swap would lose pages.
                log(f"swapoff {loop} failed: {r.stderr.strip()}: remove it by hand "
                    f"(swapoff {loop}; losetup -d {loop}; rm {shm})")
                loop = None
                shm = "/nonexistent"
        if loop:
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        if os.path.exists(shm):
            os.unlink(shm)
