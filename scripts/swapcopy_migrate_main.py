"""swapcopy-migrate's entry point: scripts/swapcopy-migrate runs it (through
swapcopy-handoff, when no prepared destination's agent takes the command).
The code lives in modules, which Python keeps compiled."""
import sys

from swapcopy_migrate import main

sys.exit(main())
