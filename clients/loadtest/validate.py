#!/usr/bin/env python3
"""Check a load-test report: python clients/loadtest/validate.py OUT/report.json [--max-errors 0] [--methods relate,count]"""

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from clients.loadtest.cli import validate_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(validate_main())
