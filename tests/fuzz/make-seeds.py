#!/usr/bin/env python3
"""Write the seed corpora of tests/fuzz/ (run from anywhere; rewrites them).

NBD seeds (corpus/fuzz-nbd-source, corpus/fuzz-nbd-dest): byte 0 selects
where the stream starts (nbd-harness.h), the rest is what a client sends.
Control seeds (corpus/fuzz-control): request lines."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
IHAVEOPT = b"IHAVEOPT"
REQ = 0x25609513
OPT = {"export_name": 1, "abort": 2, "list": 3, "starttls": 5, "info": 6, "go": 7,
       "structured": 8, "list_meta": 9, "set_meta": 10}
CMD = {"read": 0, "write": 1, "disc": 2, "flush": 3, "trim": 4, "cache": 5,
       "write_zeroes": 6, "block_status": 7}


def opt(name, payload=b""):
    return IHAVEOPT + struct.pack(">II", OPT[name], len(payload)) + payload


def info_payload(export, infos=()):
    e = export.encode()
    return struct.pack(">I", len(e)) + e + struct.pack(">H", len(infos)) + \
        b"".join(struct.pack(">H", i) for i in infos)


def meta_payload(export, queries):
    e = export.encode()
    body = struct.pack(">I", len(e)) + e + struct.pack(">I", len(queries))
    for q in queries:
        body += struct.pack(">I", len(q)) + q.encode()
    return body


def req(cmd, offset=0, length=0, flags=0, cookie=1, payload=b""):
    return struct.pack(">IHHQQI", REQ, flags, CMD[cmd], cookie, offset, length) + payload


def handshake(export, structured=True, meta=True):
    s = struct.pack(">I", 3)  # FIXED_NEWSTYLE | NO_ZEROES
    if structured:
        s += opt("structured")
    if meta:
        s += opt("set_meta", meta_payload(export, ["base:allocation"]))
    return s + opt("go", info_payload(export, [0, 1, 2, 3]))


def requests():
    return (req("read", 0, 4096) + req("read", 8192, 65536, cookie=2) +
            req("write", 4096, 4096, cookie=3, payload=b"\xab" * 4096) +
            req("block_status", 0, 1 << 20, cookie=4) +
            req("block_status", 0, 1 << 20, flags=8, cookie=5) +
            req("trim", 0, 8192, cookie=6) + req("write_zeroes", 0, 4096, flags=2, cookie=7) +
            req("cache", 0, 65536, cookie=8) + req("flush", cookie=9) +
            req("read", 0, 2 << 20, cookie=10) + req("read", 1 << 20, 4096, flags=4, cookie=11) +
            req("disc", cookie=12))


def nbd_seeds(export):
    s = {}
    s["go-then-requests"] = b"\x00" + handshake(export) + requests()
    s["simple-replies"] = b"\x00" + handshake(export, structured=False, meta=False) + requests()
    s["list-info-abort"] = b"\x00" + struct.pack(">I", 3) + opt("list") + \
        opt("info", info_payload(export, [1, 2])) + opt("info", info_payload("nope")) + opt("abort")
    s["list-meta"] = b"\x00" + struct.pack(">I", 1) + opt("structured") + \
        opt("list_meta", meta_payload(export, ["base:", "qemu:dirty-bitmap:x"])) + opt("abort")
    s["export-name"] = b"\x00" + struct.pack(">I", 1) + opt("export_name", export.encode()) + \
        req("read", 0, 512) + req("disc")
    s["starttls-unsupported"] = b"\x00" + struct.pack(">I", 3) + opt("starttls") + \
        opt("go", info_payload(export)) + req("read", 0, 4096)
    s["done-message"] = b"\x00" + struct.pack(">I", 3) + \
        opt("info", info_payload("swapcopy:destination-has-every-page")) + opt("abort")
    s["too-big-option"] = b"\x00" + struct.pack(">I", 3) + IHAVEOPT + \
        struct.pack(">II", 7, 70000) + b"\0" * 70000 + opt("abort")
    s["transmission-structured-meta"] = b"\x07" + requests()
    s["transmission-simple"] = b"\x01" + requests()
    s["transmission-oversized"] = b"\x03" + req("write", 0, 33 << 20, cookie=1) + b"\x11" * 4096
    s["transmission-land"] = b"\x0f" + req("read", 0, 196608) + req("read", 4096, 4096, cookie=2) + \
        req("write", 8192, 4096, cookie=3, payload=b"\x01" * 4096) + req("read", 0, 262144, cookie=4)
    return s


CONTROL = [
    "help\n", "stats\nstatus\n", "map 0 mem 0 8\n", "map 0 \"\" 0 1\n",
    "policy fault-timeout 0.5\npolicy bandwidth 10\npolicy background off\n",
    "policy land on\nrelease-landed\npolicy land off\n", "slot-states 0 16\n",
    "markers 0123456789abcdef\nmarkers off\n", "device /dev/loop0\ndevice\n",
    "wait-all-local\n", "  policy   fault-timeout\t1e3 \n", "unknown command\n",
]


def write(name, seeds):
    d = os.path.join(HERE, "corpus", name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    for k, v in seeds.items():
        with open(os.path.join(d, k), "wb") as f:
            f.write(v)


write("fuzz-nbd-source", nbd_seeds("mem"))
write("fuzz-nbd-dest", nbd_seeds("swap"))
write("fuzz-control", {f"lines-{i:02d}": c.encode() for i, c in enumerate(CONTROL)})
