"""Requests to nbd-pagesrv's control socket (docs/control-protocol.md), as
pagesrv-ctl sends them, without starting a program for each: that cost
5-10 ms a request here, twice on the way to the switch. Stdlib only."""
import json
import socket


class ControlError(Exception):
    pass


def request(path, *words, timeout=60.0):
    """Send one request line (COMMAND ARG...) and return its answer, a JSON
    object. Raises ControlError if the socket cannot be used or the daemon
    answers an error."""
    line = " ".join(words)
    buf = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(line.encode() + b"\n")
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    raise ControlError(f"nbd-pagesrv closed its control socket {path} without "
                                       f"answering '{line}': see its log")
                buf += chunk
    except OSError as e:
        raise ControlError(f"nbd-pagesrv's control socket {path} failed on '{line}': "
                           f"{e.strerror or e} (is that nbd-pagesrv still running?)") from e
    try:
        answer = json.loads(buf)
    except ValueError as e:
        raise ControlError(f"nbd-pagesrv's answer to '{line}' on {path} is not JSON ({e}): "
                           f"{buf[:200]!r}") from e
    if isinstance(answer, dict) and "error" in answer:
        raise ControlError(f"nbd-pagesrv ({path}) refused '{line}': {answer['error']}")
    return answer
