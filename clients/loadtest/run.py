#!/usr/bin/env python3
"""Load test a segsrv server: python clients/loadtest/run.py --addr 127.0.0.1:PORT --out DIR [...]

See docs/loadtest.md (or --help) for every option.
"""

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]
# run as a script: import the harness as clients.loadtest from the repository root
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

if __name__ == "__main__":  # (not when multiprocessing re-imports this file in a load process)
    from clients.loadtest.cli import main

    sys.exit(main())
