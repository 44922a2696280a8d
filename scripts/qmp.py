"""A small QMP client (QEMU Machine Protocol over a Unix socket), stdlib only."""
import json
import socket


class QMPError(Exception):
    pass


class QMP:
    def __init__(self, path, timeout=30.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            raise QMPError(f"cannot connect to QMP socket {path}: {e.strerror} "
                           f"(start QEMU with -qmp unix:{path},server=on,wait=off)") from e
        self.file = self.sock.makefile("rw")
        self.events = []
        greeting = self._read()
        if "QMP" not in greeting:
            raise QMPError(f"{path} does not speak QMP (got {greeting!r})")
        self.version = greeting["QMP"]["version"]["qemu"]
        self.cmd("qmp_capabilities")

    def _read(self):
        line = self.file.readline()
        if not line:
            raise QMPError(f"QEMU closed the QMP socket {self.path}")
        return json.loads(line)

    def cmd(self, name, **args):
        req = {"execute": name}
        if args:
            req["arguments"] = args
        self.file.write(json.dumps(req) + "\n")
        self.file.flush()
        while True:
            r = self._read()
            if "event" in r:
                self.events.append(r)
                continue
            if "error" in r:
                raise QMPError(f"{name} failed on {self.path}: {r['error'].get('desc', r['error'])}")
            return r.get("return")

    def hmp(self, line):
        return self.cmd("human-monitor-command", **{"command-line": line})

    def close(self):
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass
