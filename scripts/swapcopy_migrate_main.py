"""swapcopy-migrate's entry point: scripts/swapcopy-migrate runs it (through
swapcopy-handoff, when no prepared destination's agent takes the command).
The code lives in modules, which Python keeps compiled."""
import os
import sys
import threading

from swapcopy_migrate import main

rc = main()
# The interpreter's own clean-up took 30-45 ms after a --prepare-only (no
# system call in it, by strace), time its caller waits for nothing: every
# file this command writes is closed by now. Only a thread still running
# that is not a daemon gets the ordinary exit, which waits for it.
if all(t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
sys.exit(rc)
