"""A small QMP client (QEMU Machine Protocol over a Unix socket), stdlib only."""
import json
import socket


class QMPError(Exception):
    pass


class QMP:
    def __init__(self, path, timeout=30.0, first=()):
        """Connect, and run the commands in `first` (pairs of name and
        arguments): they go out with qmp_capabilities, before the greeting
        is read, and their answers (a QMPError for a failed one) are left
        in self.first. A QEMU busy running its guest takes several ms to
        answer each request here: one round trip instead of one each."""
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
        self.send("qmp_capabilities")
        for name, args in first:
            self.send(name, **args)
        greeting = self._read()
        if "QMP" not in greeting:
            raise QMPError(f"{path} does not speak QMP (got {greeting!r})")
        self.version = greeting["QMP"]["version"]["qemu"]
        self.reply("qmp_capabilities")
        self.first = []
        for name, _ in first:
            try:
                self.first.append(self.reply(name))
            except QMPError as e:
                self.first.append(e)

    def _read(self):
        line = self.file.readline()
        if not line:
            raise QMPError(f"QEMU closed the QMP socket {self.path}")
        return json.loads(line)

    def send(self, name, **args):
        """A request whose answer reply() reads: answers come in order."""
        req = {"execute": name}
        if args:
            req["arguments"] = args
        self.file.write(json.dumps(req) + "\n")
        self.file.flush()

    def reply(self, name):
        while True:
            r = self._read()
            if "event" in r:
                self.events.append(r)
                continue
            if "error" in r:
                raise QMPError(f"{name} failed on {self.path}: {r['error'].get('desc', r['error'])}")
            return r.get("return")

    def cmd(self, name, **args):
        self.send(name, **args)
        return self.reply(name)

    def hmp(self, line):
        return self.cmd("human-monitor-command", **{"command-line": line})

    def close(self):
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass
