"""The client and the operation contracts stay light (README, "Arrows point one way"): importing
segsrv.client or segsrv.ops loads no engine, compiled kernels, scipy or duckdb; a server's first Relate answer
loads the hits' wire encoder (segsrv._kernels.wire) and only then."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("segsrv.engine", "segsrv._kernels", "scipy", "duckdb")

PROBE = """
import json, sys
import segsrv.client, segsrv.ops
from segsrv.ops.relate import RelateResult
from segsrv.v1 import segsrv_pb2 as pb
RelateResult.from_proto(pb.RelateResponse(hits=[pb.RelateHit(field="f", value="v", support=3)]))
print(json.dumps(sorted({m.split(".")[0] if not m.startswith("segsrv.") else ".".join(m.split(".")[:2])
                         for m in sys.modules})))
"""


def test_importing_the_client_and_ops_loads_nothing_heavy():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(json.loads(out.stdout))
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_encoding_an_answer_loads_the_wire_kernel():
    probe = PROBE.replace("print(", "import numpy as np\nfrom segsrv.ops.relate import RelateHits\n"
                          "RelateResult('s', 'v', 'u', 10, 5, 7, 1, 'scan', RelateHits(np.zeros(1, np.int64), ['f'], "
                          "['v'], np.zeros((1, 17)), np.ones(1, np.int64), np.ones(1, np.int64)), 1.0).to_proto(1.0)\n"
                          "print(")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert "segsrv._kernels" in set(json.loads(out.stdout))
