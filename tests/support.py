"""Helpers shared by every test suite (imported as ``support``: tests/conftest.py puts tests/ on sys.path).

* ``quiet``: a progress callback that prints nothing;
* ``rows_of_feature`` / ``ids_by_value`` / ``assert_field_matches``: a built universe's features read from
  its bitsets and sparse lists, compared with brute-force (id, value) pairs; ``assert_sparse_csr``: its
  rows -> sparse features index is the transpose of its sparse lists;
* ``FakeContext`` / ``Aborted``: a gRPC servicer context whose call ends after N is_active() checks;
* ``strip_elapsed``: an answer dict without its (checked) ``elapsed_ms``; ``segsrv_cli``: ``python -m segsrv``;
* ``assert_same_answer``: two JSON answers equal, integers exactly and floats to 1e-12 (merged vs unsharded);
* ``ServeProcess``: ``segsrv serve`` in a child process (JSON logs in a file); ``repo_env``, ``process_alive``;
* ``tree_digest`` / ``root_state``: pictures of a snapshot version / root, to prove nothing changed;
* ``as_format_version_1``: a copied snapshot version turned into what a format-version-1 build wrote;
* ``SEED_QUERY``: the demo's seed question (what else is in the orders holding dog dry food);
* ``CUSTOMER_CONDITIONS``: JSON `where` conditions over PetNord's customers, one per condition shape;
* ``write_shop``: a small synthetic shop with a ``[shards]`` section (customers, orders, products replicated);
* ``write_small_shop``: a one-table shop (CSV + spec) to rebuild with changed data (versions over time);
* ``build_where_strategy``: random JSON `where` trees (hypothesis) over a universe's fields and values;
* sharded answers against unsharded ones: ``sharded_services`` (the two services), ``compare_over_shards`` /
  ``answer_or_error`` (the same answer or the same error) and one ``assert_same_*`` per operation (Relate,
  Profile, Info, Predict, ScoreSegment, Evaluate, Assign, Discover);
* the brute-force oracle over the SOURCE tables (``Source``, ``BruteUniverse``, ``Oracle``): it loads
  the PetNord JSON files with the standard library + pandas, parses the TOML spec itself, walks field
  paths (forward links, reverse links with "exists" semantics, several hops) with pandas joins, and
  evaluates JSON `where` conditions with its own code. It takes from the snapshot only the list of
  field names to cover and the edges of quantile-banded numeric columns (explicit edges are checked
  against the spec).
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import ipaddress
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections import defaultdict
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
import pytest
from hypothesis import strategies as st

from segsrv.snapshot.builder import band_labels


def quiet(_msg: str) -> None:
    pass


# ----------------------------------------------------------------------------
# an opened universe's features, row by row (the bitsets and sparse lists, not the CSR)
# ----------------------------------------------------------------------------


def rows_of_feature(u, fid: int) -> np.ndarray:
    """Rows having feature `fid`, read from the bitset / sparse list (not the CSR)."""
    slot = int(u.feature_slot[fid])
    if slot >= 0:
        bits = np.unpackbits(np.asarray(u.dense[slot]).view(np.uint8), bitorder="little")
        assert not bits[u.n_rows:].any(), "bits past n_rows must be zero"
        return np.flatnonzero(bits[: u.n_rows])
    return np.asarray(u.sparse_feature_ids(fid), dtype=np.int64)


def transpose_of_sparse_ids(u) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) of the rows -> sparse features index, by brute force: every (row, feature) pair of
    sparse_ids.bin, sorted by row then feature with pandas."""
    fid_of_slot = np.empty(len(u.sparse_features), dtype=np.int64)
    fid_of_slot[-np.asarray(u.feature_slot)[u.sparse_features] - 1] = u.sparse_features
    pairs = pd.DataFrame({"row": np.asarray(u.sparse_ids, dtype=np.int64),
                          "feature": np.repeat(fid_of_slot, np.diff(np.asarray(u.sparse_offsets)))})
    pairs = pairs.sort_values(["row", "feature"], kind="stable")
    indptr = np.zeros(u.n_rows + 1, dtype=np.int64)
    np.cumsum(pairs.groupby("row").size().reindex(range(u.n_rows), fill_value=0).to_numpy(), out=indptr[1:])
    return indptr, pairs["feature"].to_numpy()


def assert_sparse_csr(u) -> None:
    """The sparse CSR (format version 2) is the transpose of sparse_ids.bin, rows ascending; not built (both
    files empty, the universe's attributes None) where the universe holds too few sparse ids for it."""
    from segsrv.snapshot import format as fmt

    files = [u.dir / f for f in ("sparse_csr_indptr.bin", "sparse_csr_indices.bin")]
    if not fmt.sparse_csr_pays(len(u.sparse_ids), u.n_rows):
        assert u.sparse_csr_indptr is None and u.sparse_csr_indices is None
        assert all(fmt.read_header(f)[1] == (0,) for f in files)
        return
    indptr, indices = transpose_of_sparse_ids(u)
    assert u.sparse_csr_indptr.dtype == np.int64 and u.sparse_csr_indices.dtype == np.uint32
    assert np.array_equal(np.asarray(u.sparse_csr_indptr), indptr)
    assert np.array_equal(np.asarray(u.sparse_csr_indices, dtype=np.int64), indices)


def ids_by_value(u, field: str) -> dict[str, set]:
    f = u.field(field)
    out = {}
    for i, value in enumerate(f.values):
        rows = rows_of_feature(u, f.feature_offset + i)
        out[value] = set(u.ids_for_rows(rows))
    return out


def expected_by_value(pairs) -> dict[str, set]:
    out = defaultdict(set)
    for key, value in pairs:
        out[value].add(key)
    return dict(out)


def assert_field_matches(u, field: str, pairs) -> None:
    """Every value's row set (and count) equals the brute-force (id, value) pairs."""
    expected = expected_by_value(pairs)
    actual = ids_by_value(u, field)
    f = u.field(field)
    assert {v: ids for v, ids in actual.items() if ids} == expected
    for i, value in enumerate(f.values):
        assert int(f.counts[i]) == len(expected.get(value, ())), (field, value)
        assert int(u.feature_count[f.feature_offset + i]) == len(expected.get(value, ())), (field, value)


# ----------------------------------------------------------------------------
# a fake servicer context
# ----------------------------------------------------------------------------


class Aborted(Exception):
    pass


class FakeContext:
    """A servicer context whose call ends after `active` is_active() checks: the deadline passed
    (time_remaining() == 0), or with cancelled=True the client cancelled (time_remaining() is None)."""

    def __init__(self, active: int, cancelled: bool = False):
        self.active = active
        self.cancelled = cancelled
        self.status = None

    def is_active(self):
        self.active -= 1
        return self.active >= 0

    def time_remaining(self):
        return None if self.cancelled else 0.0

    def abort_with_status(self, status):
        self.status = status
        raise Aborted()


# ----------------------------------------------------------------------------
# answers, the CLI, snapshot pictures
# ----------------------------------------------------------------------------


def answers(service, kind, obj: dict):
    """service.call of the `kind` query read from the JSON form `obj` (a copy: from_json keeps no reference)."""
    return service.call(kind.from_json(json.loads(json.dumps(obj))))


def strip_elapsed(answer: dict) -> dict:
    """ANSWER without its elapsed_ms (which must be a float): what is left compares exactly."""
    assert isinstance(answer.pop("elapsed_ms"), float)
    return answer


def assert_same_answer(got, want, path: str = "answer") -> None:
    """Two JSON answers (dicts, lists, numbers, text) equal: the same keys, lists and text, integers bit for
    bit, floats to 1e-12 (relative), NaN with NaN."""
    assert type(got) is type(want) or {type(got), type(want)} <= {int, float}, (path, got, want)
    if isinstance(want, dict):
        assert list(got) == list(want), (path, list(got), list(want))
        for key in want:
            assert_same_answer(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), (path, len(got), len(want))
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_answer(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and math.isnan(want):
        assert math.isnan(got), (path, got)
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=1e-12, abs_tol=0.0), (path, got, want)
    else:
        assert got == want, (path, got, want)


def segsrv_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m segsrv ARGS`, output captured as text."""
    return subprocess.run([sys.executable, "-m", "segsrv", *args], capture_output=True, text=True, timeout=timeout)


REPO = Path(__file__).resolve().parents[1]


def repo_env() -> dict:
    """The environment with this checkout first on PYTHONPATH (for `python -m segsrv` children)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for servers that cannot be given port 0, e.g. Ray Serve's gRPC proxy)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class ServeProcess:
    """`segsrv serve ... --port 0 --log-format json [--workers 1] ARGS` with stderr in a file we can re-read;
    waits for its `serving ROOT on ADDRESS` line (`.address`). One process unless ARGS give --workers
    (`default_workers=True`: neither, the CLI's default of one worker per CPU): the tests of one
    process's behaviour (signals, reload, metrics) need that process. `launcher`: what runs the CLI
    (default `-m segsrv`; `("-c", CODE)` runs CODE, which reads the arguments from sys.argv[1:])."""

    def __init__(self, root: Path, log_path: Path, *args: str, launcher: tuple[str, ...] = ("-m", "segsrv"),
                 default_workers: bool = False):
        self.root = root
        self.log_path = log_path
        self.log = open(log_path, "w")
        pinned = () if default_workers or "--workers" in args else ("--workers", "1")
        self.proc = subprocess.Popen(
            [sys.executable, *launcher, "serve", "--snapshots", str(root), "--port", "0",
             "--log-format", "json", *pinned, *args],
            stderr=self.log, stdout=subprocess.DEVNULL, env=repo_env())
        self.address = self.wait_for_line(rf"serving {re.escape(str(root))} on (127\.0\.0\.1:\d+)").group(1)

    def text(self) -> str:
        return self.log_path.read_text()

    def records(self) -> list[dict]:
        out = []
        for line in self.text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line being written
        return out

    def wait_for_line(self, pattern: str, timeout: float = 90.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text(), re.M)
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r}; log:\n{self.text()[-4000:]}")

    def worker_pids(self) -> dict[int, int]:
        """Latest pid of each worker index (from the supervisor's worker_started events)."""
        pids = {}
        for rec in self.records():
            if rec.get("event") == "worker_started":
                pids[rec["worker_index"]] = rec["worker_pid"]
        return pids

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            for pid in self.worker_pids().values():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.log.close()


# ----------------------------------------------------------------------------
# TLS: a throwaway CA, server, client and stranger certificates (tests/server)
# ----------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool = False, server: bool = False):
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class Pki:
    def __init__(self, d: Path):
        self.dir = d
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert("segsrv test CA", ca_key, _name("segsrv test CA"), ca_key, ca=True)
        other_key = ec.generate_private_key(ec.SECP256R1())
        other_ca = _cert("another CA", other_key, _name("another CA"), other_key, ca=True)
        server_key = ec.generate_private_key(ec.SECP256R1())
        client_key = ec.generate_private_key(ec.SECP256R1())
        stranger_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = _pem(ca)
        self.files = {
            "ca.pem": self.ca,
            "server.pem": _pem(_cert("localhost", server_key, ca.subject, ca_key, server=True)),
            "server.key": _pem_key(server_key),
            "client.pem": _pem(_cert("client", client_key, ca.subject, ca_key)),
            "client.key": _pem_key(client_key),
            "stranger.pem": _pem(_cert("stranger", stranger_key, other_ca.subject, other_key)),
            "stranger.key": _pem_key(stranger_key),
        }
        for name, data in self.files.items():
            (d / name).write_bytes(data)

    def path(self, name: str) -> Path:
        return self.dir / name

    def channel(self, address: str, client: str | None = None) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca,
            private_key=self.files[f"{client}.key"] if client else None,
            certificate_chain=self.files[f"{client}.pem"] if client else None,
        )
        return grpc.secure_channel(address, creds)



def readonly(a: np.ndarray) -> np.ndarray:
    """A read-only copy of `a` (kernels must accept read-only inputs)."""
    a = a.copy()
    a.setflags(write=False)
    return a


def as_memmap(tmp_path: Path, a: np.ndarray, name: str) -> np.ndarray:
    """`a` written to tmp_path/NAME.bin and mapped back read-only, as snapshot arrays are."""
    path = tmp_path / f"{name}.bin"
    a.tofile(path)
    return np.memmap(path, dtype=a.dtype, mode="r", shape=a.shape)


def tree_digest(vdir: Path) -> dict[str, str]:
    """Every file below a snapshot version: relative path -> sha256."""
    return {
        p.relative_to(vdir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(vdir.rglob("*"))
        if p.is_file()
    }


def as_format_version_1(vdir: Path) -> None:
    """Turn a (copied) version directory of the current format into a format-version-1 one: no sparse CSR
    files (nor manifest entries), format_version 1 in the manifest and in every array file's header, every
    file entry recomputed (segsrv.snapshot.format, Compatibility)."""
    from segsrv.snapshot import format as fmt
    from segsrv.snapshot.builder import file_entries
    from segsrv.snapshot.reader import SPARSE_CSR_FILES

    manifest = json.loads((vdir / fmt.MANIFEST).read_text())
    for name in manifest["universes"]:
        for f in SPARSE_CSR_FILES:
            (vdir / "universes" / name / f).unlink()
    for path in vdir.rglob("*.bin"):
        raw = bytearray(path.read_bytes())
        raw[8:10] = (1).to_bytes(2, "little")
        path.unlink()  # published files are read-only (and may be hard links): write new ones
        path.write_bytes(bytes(raw))
    manifest["format_version"] = 1
    manifest["files"] = {rel: entry for rel, entry in file_entries(vdir).items() if rel != fmt.MANIFEST}
    (vdir / fmt.MANIFEST).unlink()
    (vdir / fmt.MANIFEST).write_bytes(fmt.dumps_manifest(manifest))


def root_state(root: Path) -> dict:
    """Everything below a snapshot root: relative path -> bytes digest (dirs as 'dir')."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ----------------------------------------------------------------------------
# the tiny shop's tables (customers and their orders, CSV), shared by the specs of
# tests/snapshot/conftest.py (TINY_SPEC) and tests/test_cli_diff.py; each spec goes on with the
# orders' other columns, its links and universes
# ----------------------------------------------------------------------------

TINY_TABLES = """\
[tables.customers]
file = "customers.csv"
key = "cust_id"
categorical = ["region"]
numeric = { age = { edges = [30, 50] } }

[tables.orders]
file = "orders.csv"
key = "order_id"
categorical = ["channel"]
"""


# ----------------------------------------------------------------------------
# queries shared by several suites
# ----------------------------------------------------------------------------

# the demo shop's seed question (segsrv demo-data): grain-free dog dry food, by region and lifetime value
DEMO_SEED_QUERY = {"from": "order_lines", "where": {"product.category": "dog-dryfood", "product.tag": "grain-free"},
                   "relate": ["customer.region", "customer.lifetime_value_band"],
                   "select": ["$lift", "$p", "$support", "customer.region"], "limit": 10}

# PetNord customers: one condition of each shape (a negation without segment references: rows
# without the value match too)
CUSTOMER_CONDITIONS = {
    "term": {"region": "oulu"},
    "and": {"lifestyle": "premium", "churned": True},
    "negation": {"segment": "dog_owner", "region": {"$ne": "helsinki"}},
    "not_tree": {"$not": {"$or": [{"churned": True}, {"lifestyle": "budget"}]}},
    "range": {"total_spent_eur": {"$gte": 100, "$lt": 250.5}},
    "exists_link": {"orders.lines.product.category": "litter", "health_focus": ["high", "low"]},
    "all": {},
    "empty": {"$and": [{"churned": True}, {"churned": False}]},
}


# ----------------------------------------------------------------------------
# source tables and spec, read independently of segsrv
# ----------------------------------------------------------------------------

RANGE_OPS = ("$gte", "$gt", "$lte", "$lt")


class Source:
    """The PetNord tables as pandas frames plus the spec's declarations."""

    def __init__(self, spec_path: Path):
        raw = tomllib.loads(spec_path.read_text())
        base = spec_path.parent
        self.tables: dict[str, pd.DataFrame] = {}
        self.keys: dict[str, str] = {}
        self.kinds: dict[str, dict[str, str]] = {}  # table -> column -> categorical|multi|numeric
        self.delims: dict[str, dict[str, str]] = {}
        self.numeric: dict[str, dict[str, dict]] = {}
        self.links: dict[str, dict[str, tuple[str, str, str | None]]] = {}  # table -> name -> (col, target, reverse)
        for name, t in raw["tables"].items():
            path = (base / t["file"]).resolve()
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                self.tables[name] = pd.DataFrame(json.load(fh))
            self.keys[name] = t["key"]
            kinds = {c: "categorical" for c in t.get("categorical", [])}
            kinds.update({c: "multi" for c in t.get("multi", {})})
            kinds.update({c: "numeric" for c in t.get("numeric", {})})
            self.kinds[name] = kinds
            self.delims[name] = dict(t.get("multi", {}))
            self.numeric[name] = dict(t.get("numeric", {}))
            self.links[name] = {ln: (l["column"], l["table"], l.get("reverse")) for ln, l in t.get("links", {}).items()}
        self.universe_tables = {u: spec.get("table", u) for u, spec in raw["universes"].items()}
        self._by_key = {}

    def by_key(self, table: str) -> pd.DataFrame:
        if table not in self._by_key:
            self._by_key[table] = self.tables[table].set_index(self.keys[table])
        return self._by_key[table]

    def sorted_ids(self, table: str) -> np.ndarray:
        return np.array(sorted(self.tables[table][self.keys[table]].tolist()), dtype=object)

    def walk(self, root: str, path: str):
        """(root row positions, leaf values, leaf table, column, exists?) of a field path."""
        parts = path.split(".")
        column, steps = parts[-1], parts[:-1]
        ids = self.sorted_ids(root)
        pos = np.arange(len(ids))
        cur = ids
        table = root
        exists = False
        for step in steps:
            if step in self.links[table]:  # forward: follow the link column
                col, target, _ = self.links[table][step]
                nxt = self.by_key(table)[col].reindex(cur).to_numpy(dtype=object)
                ok = pd.notna(nxt)
                pos, cur, table = pos[ok], nxt[ok], target
            else:  # reverse: every row of the owner table pointing at cur
                owners = [(o, l) for o, ls in self.links.items() for l in ls.values() if l[1] == table and l[2] == step]
                assert len(owners) == 1, f"cannot resolve step {step!r} from {table!r}"
                owner, (col, _, _) = owners[0]
                okey = self.keys[owner]
                left = pd.DataFrame({"pos": pos, "k": cur})
                right = self.tables[owner][[col, okey]].rename(columns={col: "k", okey: "__okey"})
                m = left.merge(right, on="k", how="inner")
                pos, cur, table = m["pos"].to_numpy(), m["__okey"].to_numpy(dtype=object), owner
                exists = True
        vals = self.by_key(table)[column].reindex(cur).to_numpy(dtype=object)
        ok = pd.notna(vals)
        return pos[ok], vals[ok], table, column, exists


def _text(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, str):
        return v
    raise AssertionError(f"unexpected categorical value {v!r}")


class BruteField:
    def __init__(self, name, kind, exists, n, masks, raw=None, edges=None):
        self.name = name
        self.kind = kind
        self.exists = exists
        self.n = n
        self.masks = masks  # value -> bool[n]
        self.raw = raw  # float[n] (NaN = missing) for own / forward numeric fields
        self.edges = edges

    @property
    def values(self):
        return list(self.masks)


class BruteUniverse:
    """One universe computed from the source tables."""

    def __init__(self, source: Source, name: str, snapshot_universe):
        self.name = name
        self.table = source.universe_tables[name]
        self.ids = source.sorted_ids(self.table)
        self.n = len(self.ids)
        self.fields: dict[str, BruteField] = {}
        for fname, info in snapshot_universe.fields.items():
            self.fields[fname] = self._field(source, fname, info)

    def _field(self, source: Source, fname: str, info) -> BruteField:
        pos, vals, table, column, exists = source.walk(self.table, fname)
        kind = source.kinds[table][column]
        n = self.n
        masks: dict[str, np.ndarray] = {}

        def add(value: str, rows):
            m = masks.get(value)
            if m is None:
                m = masks[value] = np.zeros(n, dtype=bool)
            m[rows] = True

        if kind == "categorical":
            codes, uniques = pd.factorize(pd.Series(vals, dtype=object))
            for code, raw_value in enumerate(uniques):
                add(_text(raw_value), pos[codes == code])
            return BruteField(fname, kind, exists, n, masks)
        if kind == "multi":
            delim = source.delims[table][column]
            rows, tokens = [], []
            for p, v in zip(pos, vals):
                for tok in str(v).split(delim):
                    tok = tok.strip()
                    if tok:
                        rows.append(p)
                        tokens.append(tok)
            rows = np.asarray(rows, dtype=np.int64)
            tokens = np.asarray(tokens, dtype=object)
            for value in sorted(set(tokens)):
                add(value, rows[tokens == value])
            return BruteField(fname, kind, exists, n, masks)
        # numeric: raw values and bands [edges[i-1], edges[i])
        nspec = source.numeric[table][column]
        if "edges" in nspec:
            edges = [float(e) for e in nspec["edges"]]
            assert list(info.edges) == edges, f"{fname}: snapshot edges {info.edges} differ from the spec {edges}"
        else:
            edges = list(info.edges)  # quantile edges: computed by the builder
        x = np.asarray(vals, dtype=np.float64)
        labels = band_labels(edges)
        for i, label in enumerate(labels):
            lo = edges[i - 1] if i > 0 else -np.inf
            hi = edges[i] if i < len(edges) else np.inf
            sel = (x >= lo) & (x < hi)
            masks[label] = np.zeros(n, dtype=bool)
            masks[label][pos[sel]] = True
        raw = None
        if not exists:
            raw = np.full(n, np.nan)
            raw[pos] = x
        return BruteField(fname, kind, exists, n, masks, raw, edges)

    # -- conditions in the JSON form, evaluated independently ---------------------

    def all(self) -> np.ndarray:
        return np.ones(self.n, dtype=bool)

    def term(self, field: str, value) -> np.ndarray:
        f = self.fields[field]
        text = scalar_text(value)
        if text in f.masks:
            return f.masks[text].copy()
        if f.raw is not None:
            return f.raw == float(text)  # NaN never equals
        raise KeyError(f"{field}={text!r}")

    def eval(self, where) -> np.ndarray:
        if where is None or where == {}:
            return self.all()
        out = self.all()
        for key, val in where.items():
            if key == "$and":
                m = self.all()
                for item in val:
                    m &= self.eval(item)
            elif key == "$or":
                m = np.zeros(self.n, dtype=bool)
                for item in val:
                    m |= self.eval(item)
            elif key == "$not":
                m = ~self.eval(val)
            elif key == "$all":
                m = self.all()
            else:
                m = self._field_cond(key, val)
            out &= m
        return out

    def _field_cond(self, field: str, val) -> np.ndarray:
        if isinstance(val, list):
            m = np.zeros(self.n, dtype=bool)
            for v in val:
                m |= self.term(field, v)
            return m
        if isinstance(val, dict):
            if set(val) <= set(RANGE_OPS):
                x = self.fields[field].raw
                m = ~np.isnan(x)
                with np.errstate(invalid="ignore"):
                    if "$gte" in val:
                        m &= x >= val["$gte"]
                    if "$gt" in val:
                        m &= x > val["$gt"]
                    if "$lte" in val:
                        m &= x <= val["$lte"]
                    if "$lt" in val:
                        m &= x < val["$lt"]
                return m
            if set(val) == {"$in"}:
                return self._field_cond(field, val["$in"] if isinstance(val["$in"], list) else [val["$in"]])
            if set(val) == {"$ne"}:
                return ~self.term(field, val["$ne"])
            raise AssertionError(f"oracle: unsupported {val!r}")
        return self.term(field, val)

    def id_set(self, mask: np.ndarray) -> set:
        return set(self.ids[mask].tolist())

    # -- features -------------------------------------------------------------------

    def features(self, fields) -> list[tuple[str, str]]:
        return [(f, v) for f in fields for v in self.fields[f].masks]

    def feature_mask(self, field: str, value: str) -> np.ndarray:
        return self.fields[field].masks[value]


def scalar_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return value



class Oracle:
    """BruteUniverse of each universe of SNAPSHOT (the field list), computed once per universe."""

    def __init__(self, source: Source, snapshot):
        self.source = source
        self.snapshot = snapshot
        self._universes: dict[str, BruteUniverse] = {}

    def universe(self, name: str) -> BruteUniverse:
        if name not in self._universes:
            self._universes[name] = BruteUniverse(self.source, name, self.snapshot.universe(name))
        return self._universes[name]


# ----------------------------------------------------------------------------
# independent expectations of JSON answers (the client's and the CLI's), from the oracle
# ----------------------------------------------------------------------------


def _mask(bu: BruteUniverse, field: str, value) -> np.ndarray:
    return bu.fields[field].masks[value if isinstance(value, str) else scalar_text(value)]


def _hit_feature(hit: dict):
    """(field, value) of a relate hit: $field/$value, or the one selected field column; None if neither."""
    if "$field" in hit:
        return hit["$field"], hit["$value"]
    names = [k for k in hit if not k.startswith("$")]
    return (names[0], hit[names[0]]) if len(names) == 1 else None


def expect_relate(answer: dict, query: dict, oracle: Oracle) -> None:
    """A relate answer against the oracle: n_rows, n_condition, and every hit's support (and n_feature)."""
    bu = oracle.universe(query["from"])
    cond = bu.eval(query.get("where"))
    assert (answer["n_rows"], answer["n_condition"]) == (bu.n, int(cond.sum()))
    for hit in answer["hits"]:
        feature = _hit_feature(hit)
        if feature is None or "$support" not in hit:
            continue
        mask = _mask(bu, *feature)
        assert hit["$support"] == int((cond & mask).sum()), (feature, hit)
        if "$n_feature" in hit:
            assert hit["$n_feature"] == int(mask.sum()), (feature, hit)


def expect_count(answer: dict, query: dict, oracle: Oracle) -> None:
    bu = oracle.universe(query["from"])
    assert (answer["n_rows"], answer["count"]) == (bu.n, int(bu.eval(query.get("where")).sum()))


def expect_predict(answer: dict, query: dict, oracle: Oracle) -> None:
    """A predict answer against the oracle: the segment's size, the target's values (probabilities summing
    to 1 for a single-valued target) and, for a row given by id alone, evidence the row really has."""
    bu = oracle.universe(query["from"])
    assert answer["n_segment"] == int(bu.eval(query.get("segment")).sum())
    values = [p["value"] for p in answer["probabilities"]]
    assert set(values) <= set(bu.fields[query["target"]].values)
    if not answer["multi_valued"]:
        assert sorted(values) == sorted(bu.fields[query["target"]].values)
        assert abs(sum(p["probability"] for p in answer["probabilities"]) - 1.0) < 1e-9
    if "id" in query and "evidence" not in query:  # the row's own features (explicit evidence comes on top)
        (row,) = np.flatnonzero(bu.ids == query["id"])
        for field, value in answer["evidence"]:
            assert _mask(bu, field, value)[row], (query["id"], field, value)


def expect_score(answer: dict, query: dict, oracle: Oracle) -> None:
    """A score_segment answer: n_members = the segment's size, every scored id a member."""
    bu = oracle.universe(query["from"])
    seg = bu.eval(query.get("segment"))
    assert answer["n_members"] == int(seg.sum())
    assert answer["returned"] == len(answer["scores"]) and {s["id"] for s in answer["scores"]} <= bu.id_set(seg)


def expect_evaluate(answer: dict, query: dict, oracle: Oracle) -> None:
    """An evaluate answer: training + test rows = the segment, the classes = the target's values."""
    bu = oracle.universe(query["from"])
    assert answer["n_train"] + answer["n_test"] == int(bu.eval(query.get("segment")).sum())
    assert answer["values"] == sorted(bu.fields[query["target"]].values)


def expect_profile(answer: dict, query: dict, oracle: Oracle) -> None:
    """A profile answer: n_rows, n_segment, and every listed value's segment count and population share."""
    bu = oracle.universe(query["from"])
    seg = bu.eval(query.get("segment"))
    assert (answer["n_rows"], answer["n_segment"]) == (bu.n, int(seg.sum()))
    for f in answer["fields"]:
        for item in f["over"] + f["under"]:
            mask = _mask(bu, f["field"], item["value"])
            assert item["segment_count"] == int((seg & mask).sum()), (f["field"], item)
            assert abs(item["population_share"] - mask.sum() / bu.n) < 1e-12, (f["field"], item)


def expect_profile_numeric(answer: dict, query: dict, oracle: Oracle) -> None:
    """A profile answer's numeric summaries (segment and population) against numpy over the oracle's raw values:
    count exactly, the rest to 1e-12 (numpy's linear percentiles, population std)."""
    bu = oracle.universe(query["from"])
    seg = bu.eval(query.get("segment"))
    for nf in answer["numeric"]:
        raw = bu.fields[nf["field"]].raw
        for part, mask in (("segment", seg), ("population", bu.all())):
            x = raw[mask & ~np.isnan(raw)]
            got = nf[part]
            assert got["count"] == len(x), (nf["field"], part)
            if not len(x):
                continue
            q25, q50, q75 = np.percentile(x, [25, 50, 75])
            want = {"mean": np.mean(x), "std": np.std(x), "min": np.min(x), "p25": q25, "median": q50, "p75": q75,
                    "max": np.max(x)}
            for name, value in want.items():
                assert abs(got[name] - value) <= 1e-12 * max(1.0, abs(value)), (nf["field"], part, name)


def cli_remote_and_local(kind: str, addr: str, root, query: dict) -> tuple[dict, dict]:
    """`segsrv query KIND` against the server at ADDR and over the snapshot root ROOT: both JSON answers."""
    text = json.dumps(query)
    remote = segsrv_cli("query", kind, "--addr", addr, "--timeout", "30", "--json", text)
    local = segsrv_cli("query", kind, "--local", str(root), "--json", text)
    assert remote.returncode == 0, remote.stderr
    assert local.returncode == 0, local.stderr
    return json.loads(remote.stdout), json.loads(local.stdout)


def check_remote_equals_local(remote: dict, local: dict, query: dict, oracle: Oracle, expect) -> None:
    """REMOTE (a client's answer) against EXPECT's independent expectation, then equal to LOCAL (the
    in-process JSON runner's answer): the same keys in the same order, the same values but elapsed_ms."""
    expect(remote, query, oracle)
    assert list(remote) == list(local)
    assert strip_elapsed(remote) == strip_elapsed(local)


def drain_until_aborted(messages) -> list:
    """The messages a streaming servicer method yields before it aborts (FakeContext raises Aborted)."""
    import pytest

    got = []
    with pytest.raises(Aborted):
        for msg in messages:
            got.append(msg)
    return got


def stream_deadline_codes(address: str, start, attempts: int = 10, enough: int = 3) -> list:
    """Status codes of streams START(stub) (which sets a microsecond deadline), each on a fresh
    connection, until ENOUGH failed or ATTEMPTS were made (a fast local server may still answer one)."""
    import grpc

    from segsrv.v1 import segsrv_pb2_grpc

    codes = []
    for _ in range(attempts):
        with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            try:
                list(start(segsrv_pb2_grpc.SegmentationServiceStub(ch)))
            except grpc.RpcError as err:
                codes.append(err.code())
                if len(codes) >= enough:
                    break
    return codes


# ----------------------------------------------------------------------------
# Discover by brute force (docs/discover.md), over the oracle's masks and scipy
# ----------------------------------------------------------------------------


class BruteSegment:
    def __init__(self, terms, **stats):
        self.terms = terms  # tuple of (field, value), sorted by the candidate order
        self.__dict__.update(stats)


def brute_discover(bu: BruteUniverse, fields: list[str], *, min_support: int, min_lift: float, max_length: int = 3,
                   within=None, target=None, direction: str = "both", max_overlap: float = 0.5,
                   max_excess_overlap: float | None = None, max_q_value: float = 0.05, limit: int = 20,
                   adjust: bool = True, weights: dict[str, float] | None = None, strata: int = 10,
                   implied: float = 0.95) -> dict:
    """The documented Discover search, written out naively: every frequent pair, every triple that extends a
    kept pair by a candidate frequent with both of its features (the search is exhaustive while the kept
    conjunctions of a level fit the engine's beam: `kept_per_level` tells), exact counts from boolean masks,
    Fisher tails from scipy, conservative Benjamini-Hochberg, activity strata from numpy quantiles, then the
    ranking and both redundancy rules. Returns {"n", "candidates", "tested", "segments", "kept_per_level",
    "target_count"}."""
    from scipy.stats import hypergeom

    rows = np.ones(bu.n, dtype=bool) if within is None else within.copy()
    n = int(rows.sum())
    tmask = None if target is None else (target & rows)
    cands = []
    for f in fields:
        for v, m in bu.fields[f].masks.items():
            c = int((m & rows).sum())
            if min_support <= c < n:
                cands.append((f, v))
    masks = {fv: bu.fields[fv[0]].masks[fv[1]] & rows for fv in cands}
    single = {f for f in fields if not bu.fields[f].exists and bu.fields[f].kind != "multi"}
    weight = {f: 1.0 for f in fields} | (weights or {})
    count_memo: dict = {}

    def rows_of(terms):
        m = rows.copy()
        for t in terms:
            m &= masks[t]
        return m

    def count(terms):
        terms = tuple(sorted(terms, key=cands.index))
        if terms not in count_memo:
            count_memo[terms] = int(rows_of(terms).sum())
        return count_memo[terms]

    def tcount(terms):
        return int((rows_of(terms) & tmask).sum())

    def splits(terms):
        k = len(terms)
        for mask in range(1, 1 << (k - 1)):
            yield (tuple(t for i, t in enumerate(terms) if mask >> i & 1),
                   tuple(t for i, t in enumerate(terms) if not mask >> i & 1))

    def frequent(a, b):
        return a != b and not (a[0] == b[0] and a[0] in single) and count((a, b)) >= min_support

    adjust = adjust and len(cands) >= 30  # fewer candidates: activity is mostly the features tested
    # activity strata over the rows searched
    activity = np.zeros(bu.n)
    for m in masks.values():
        activity += m
    act = activity[rows]
    edges = np.unique(np.quantile(act, np.arange(1, strata) / strata))
    stratum = np.full(bu.n, -1)
    stratum[rows] = np.searchsorted(edges, act, side="right")
    n_s = np.array([(stratum == s).sum() for s in range(len(edges) + 1)], dtype=float)

    def expected_independent(terms):
        out = 0.0
        for s in range(len(n_s)):
            prod = n_s[s]
            for t in terms:
                prod *= (masks[t] & (stratum == s)).sum() / n_s[s]
            out += prod
        return out

    def expected_target(terms):
        m = rows_of(terms)
        return sum(float((m & (stratum == s)).sum()) * float((tmask & (stratum == s)).sum()) / n_s[s]
                   for s in range(len(n_s)))

    is_implied = lambda terms, n_x: any(n_x >= implied * count(tuple(x for x in terms if x != t))  # noqa: E731
                                        for t in terms)
    found, tested = [], 0
    r = None if tmask is None else tmask.sum() / n
    directions = ("high", "low") if direction == "both" else (direction,)

    def judge(terms):
        n_x = count(terms)
        if target is None:
            lift = n_x * n ** (len(terms) - 1) / np.prod([count((t,)) for t in terms])
            sl = min(n_x * n / (count(a) * count(b)) for a, b in splits(terms))
            if sl < min_lift or is_implied(terms, n_x):
                return None
            p = max(float(hypergeom.sf(n_x - 1, n, count(a), count(b))) for a, b in splits(terms))
            adj = n_x / expected_independent(terms) if adjust else math.nan
            score = n_x * math.log(min(sl, adj) if adjust else sl)
            return BruteSegment(terms, support=n_x, lift=lift, split_lift=sl, p_value=p, adjusted_lift=adj,
                                score=score, direction="")
        x_t = tcount(terms)
        if n_x == 0:
            return None
        lift = (x_t / n_x) / r
        high = "high" in directions and lift >= min_lift
        low = "low" in directions and lift <= 1 / min_lift
        if not (high or low):
            return None
        worst = lift
        if len(terms) > 1:
            if is_implied(terms, n_x):
                return None
            for t in terms:
                g = tuple(x for x in terms if x != t)
                rel = (x_t / n_x) / (tcount(g) / count(g))
                if (high and rel < min_lift) or (not high and rel > 1 / min_lift):
                    return None
                worst = min(worst, rel) if high else max(worst, rel)
        tail = (lambda N, K, d, k: float(hypergeom.sf(k - 1, N, K, d))) if high else \
            (lambda N, K, d, k: float(hypergeom.cdf(k, N, K, d)))
        p = tail(n, int(tmask.sum()), n_x, x_t)
        for t in terms if len(terms) > 1 else ():
            g = tuple(x for x in terms if x != t)
            p = max(p, tail(count(g), tcount(g), n_x, x_t))
        if adjust:
            e = expected_target(terms)
            adj, score = x_t / e, (x_t - e if high else e - x_t)
        else:
            adj, score = math.nan, abs(x_t - n_x * r)
        return BruteSegment(terms, support=n_x, target_support=x_t, lift=lift, split_lift=worst, p_value=p,
                            adjusted_lift=adj, score=score, direction="high" if high else "low")

    kept_per_level = []
    level_kept = []
    if target is not None:
        tested += len(cands)
        level_kept = [s for s in (judge((c,)) for c in cands) if s is not None]
        found += level_kept
        kept_per_level.append(len(level_kept))
    pairs = [(a, b) for i, a in enumerate(cands) for b in cands[i + 1:] if frequent(a, b)]
    tested += len(pairs)
    if max_length >= 2:
        level_kept = [s for s in (judge(pair) for pair in pairs) if s is not None]
        found += level_kept
        kept_per_level.append(len(level_kept))
    for _length in range(3, max_length + 1):
        grown = set()
        for s in level_kept:
            for c in cands:
                if c not in s.terms and all(frequent(t, c) for t in s.terms):
                    grown.add(tuple(sorted(s.terms + (c,), key=cands.index)))
        grown = [g for g in sorted(grown, key=lambda g: [cands.index(t) for t in g]) if count(g) >= min_support]
        tested += len(grown)
        level_kept = [s for s in (judge(g) for g in grown) if s is not None]
        found += level_kept
        kept_per_level.append(len(level_kept))
        if not level_kept:
            break
    # conservative BH: the computed p-values rank first among `tested`
    order = sorted(range(len(found)), key=lambda i: found[i].p_value)
    q = [0.0] * len(found)
    running = 1.0
    for rank in range(len(order), 0, -1):
        i = order[rank - 1]
        running = min(running, found[i].p_value * max(tested, len(found)) / rank)
        q[i] = min(running, 1.0)
    for s, qv in zip(found, q):
        s.q_value = qv
        s.score *= float(np.mean([weight[t[0]] for t in s.terms]))
    keep = [s for s in found if s.q_value <= max_q_value and s.score > 0]
    keep.sort(key=lambda s: (-s.score, -s.support))
    if target is not None and direction == "both":
        hi = [s for s in keep if s.direction == "high"]
        lo = [s for s in keep if s.direction == "low"]
        merged = []
        for a, b in zip(hi, lo):
            merged += [a, b]
        merged += hi[len(lo):] if len(hi) > len(lo) else lo[len(hi):]
        keep = merged
    if max_excess_overlap is None:
        max_excess_overlap = 0.5 if target is not None else 0.3
    listed = []
    for s in keep:
        if len(listed) >= limit:
            break
        m = rows_of(s.terms)
        redundant = False
        for t in listed:
            mt = rows_of(t.terms)
            both = int((m & mt).sum())
            if both > max_overlap * (s.support + t.support - both):
                redundant = True
            chance = s.support * t.support / n
            room = min(s.support, t.support) - chance
            if room > 0 and (both - chance) / room > max_excess_overlap:
                redundant = True
        if not redundant:
            listed.append(s)
    for s in listed:
        s.share = s.support / n
        if target is not None:
            s.target_rate = s.target_support / s.support
            s.wracc = (s.support / n) * (s.target_rate - r)
    return {"n": n, "candidates": len(cands), "tested": tested, "segments": listed,
            "kept_per_level": kept_per_level, "target_count": None if tmask is None else int(tmask.sum())}


def row_features(u, row: int) -> list[tuple[str, str]]:
    """(field, value) pairs of a universe's row, as a caller would send them to Assign for a new
    customer; numeric fields with raw values are sent as raw numbers (ranges need them), others as
    band labels."""
    pairs = []
    raw_fields = {f for f, info in u.fields.items() if info.numeric is not None}
    for fid in u.csr_indices[u.csr_indptr[row]: u.csr_indptr[row + 1]]:
        f, v = u.feature_name(int(fid))
        if f not in raw_fields:
            pairs.append((f, v))
    for f in raw_fields:
        x = float(u.fields[f].numeric[row])
        if not math.isnan(x):
            pairs.append((f, repr(x)))
    return pairs


# ----------------------------------------------------------------------------
# the documented row hash (docs/predict.md "Holdout", "Choosing l2"), recomputed
# ----------------------------------------------------------------------------

M64 = (1 << 64) - 1
CV_SEED = 0x6C325F6376  # the documented seed of the cross-validation folds


def splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def fnv1a(text: str) -> int:
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & M64
    return h


def ref_fold(row_id, k: int = 5) -> int:
    """The documented fold of a row: floor(k * H(CV_SEED, id) / 2^64), H as the holdout's hash."""
    key = (int(row_id) & M64) if isinstance(row_id, (int, np.integer)) else fnv1a(str(row_id))
    h = splitmix64(key ^ splitmix64(CV_SEED))
    return min(int(k * ((h >> 11) * 2.0 ** -53)), k - 1)


SMALL_SHOP_SPEC = """name = "shop"
[tables.customers]
file = "customers.csv"
key = "customer_id"
categorical = ["region", "plan"]
numeric = { spend = { quantiles = 4 }, tenure = { quantiles = 4, pin = true }, age = { edges = [30, 50] } }
[universes.customers]
"""


def write_small_shop(directory: Path, n: int, seed: int, spend_scale: float = 1.0,
                     plans: tuple[str, ...] = ("basic", "plus", "pro")) -> Path:
    """customers.csv (customer_id, region, plan, spend, tenure, age) and spec.toml in `directory`; returns the
    spec. spend is lognormal times `spend_scale` (quartile bands), tenure 0..59 months (quartiles, pinned),
    age 18..79 (explicit edges)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "customer_id": np.arange(n),
        "region": rng.choice(["north", "south", "east", "west"], n),
        "plan": rng.choice(list(plans), n),
        "spend": np.round(rng.lognormal(4.0, 1.0, n) * spend_scale, 2),
        "tenure": rng.integers(0, 60, n),
        "age": rng.integers(18, 80, n),
    })
    df.to_csv(directory / "customers.csv", index=False)
    (directory / "spec.toml").write_text(SMALL_SHOP_SPEC)
    return directory / "spec.toml"


# -- the report's tests (tests/report) ----------------------------------------------------------

# the model the report evaluates: a fixed l2, so the build fits once without cross-validation
CHURN_MODEL = {"from": "customers", "target": "churned",
               "evidence_fields": ["segment", "region", "lifestyle", "orders.line_categories"], "l2": 1.0}
CATALOG_A = {
    "cat_people": {"universe": "customers", "where": {"segment": "cat_owner"}, "description": "cat owners"},
    "churners": {"universe": "customers", "where": {"churned": True}},
    "long_tenure": {"universe": "customers", "where": {"tenure_months": {"$gte": 24}},
                    "description": "two years or more"},
}
# version B: one definition changed, one segment removed, one added
CATALOG_B = {
    "cat_people": {"universe": "customers", "where": {"segment": ["cat_owner", "multi_pet"]},
                   "description": "cat owners & <multi> pets"},
    "churners": {"universe": "customers", "where": {"churned": True}},
    "oulu_dogs": {"universe": "customers", "where": {"segment": "dog_owner", "region": "oulu"}},
}


def embedded_data(html: str) -> dict:
    """The JSON block a report embeds (segsrv.report.render.DATA_ELEMENT_ID)."""
    m = re.search(r'<script type="application/json" id="segsrv-report-data">(.*?)</script>', html, re.S)
    assert m, "the report embeds no data block"
    return json.loads(m.group(1))


# ----------------------------------------------------------------------------
# a small synthetic shop with a [shards] section (tests/snapshot/test_shards.py, tests/engine/test_sharded.py)
# ----------------------------------------------------------------------------

SHARDED_SHOP_SPEC = """\
name = "shop"

[shards]
entity = "customers"

[tables.customers]
file = "customers.csv"
key = "customer_id"
categorical = ["segment"]
numeric = { age = { quantiles = 3 } }

[tables.products]
key = "sku"
categorical = ["category"]
file = "products.csv"

[tables.orders]
file = "orders.csv"
key = "order_id"
categorical = ["channel"]
links = { customer = { column = "customer_id", table = "customers", reverse = "orders" }, product = { column = "sku", table = "products" } }

[universes.customers]
include = ["*", "orders.channel", "orders.product.category"]

[universes.orders]
include = ["*", "customer.segment", "product.category"]

[universes.products]
"""


def write_shop(directory: Path, n_customers: int = 40) -> Path:
    """A small shop sharded by customer (customers, orders; products replicated) as CSV files + spec.toml."""
    rng = np.random.default_rng(7)
    pd.DataFrame({"customer_id": [f"c{i}" for i in range(n_customers)],
                  "segment": rng.choice(["new", "loyal", "lapsed"], n_customers),
                  "age": rng.integers(18, 80, n_customers)}).to_csv(directory / "customers.csv", index=False)
    pd.DataFrame({"sku": [f"p{i}" for i in range(6)], "category": ["food", "toys", "food", "care", "toys", "food"]}
                 ).to_csv(directory / "products.csv", index=False)
    n_orders = 3 * n_customers
    pd.DataFrame({"order_id": np.arange(n_orders), "customer_id": rng.choice([f"c{i}" for i in range(n_customers)], n_orders),
                  "sku": rng.choice([f"p{i}" for i in range(6)], n_orders),
                  "channel": rng.choice(["web", "app", "store"], n_orders)}).to_csv(directory / "orders.csv", index=False)
    (directory / "spec.toml").write_text(SHARDED_SHOP_SPEC)
    return directory / "spec.toml"


def assert_same_assign(got, want, tolerance: float = 1e-12) -> None:
    """Two AssignResults (a sharded and an unsharded snapshot's): the same universe, assignments, segments in
    the same order with the same sizes, shares, priorities and membership, propensities to `tolerance`."""
    assert (got.universe, got.n_segments, got.suppressed_segments) == \
        (want.universe, want.n_segments, want.suppressed_segments)
    assert len(got.assignments) == len(want.assignments)
    for a, b in zip(got.assignments, want.assignments):
        assert (a.id, a.found, a.primary_segment) == (b.id, b.found, b.primary_segment)
        assert [(m.segment, m.member, m.segment_size, m.share, m.priority) for m in a.segments] == \
            [(m.segment, m.member, m.segment_size, m.share, m.priority) for m in b.segments], a.id
        for m, n in zip(a.segments, b.segments):
            if n.propensity is None:
                assert m.propensity is None
            else:
                assert m.propensity == pytest.approx(n.propensity, rel=tolerance, abs=tolerance), (a.id, m.segment)


def _one_by_one(snap, universe, ids, privacy_k, **options):
    from segsrv.engine.assign import assign
    from segsrv.ops.assign import AssignQuery

    return [assign(snap, AssignQuery(universe=universe, ids=[i], **options), privacy_k).assignments[0] for i in ids]


def _old_one_row_propensities(cat, row, options, privacy_k):
    """The one-row propensities as the per-request path computed them before its plain-Python rewrite (the bits
    the answer must keep): D's rows summed, each pair model's [s, s] block through np.ix_."""
    from segsrv.engine.assign import _sigmoid, assign_params
    from segsrv.ops.assign import AssignQuery

    bias, D, pairs = cat.floored_model(assign_params(AssignQuery(ids=[0], **options)), privacy_k)
    feats = cat.universe.row_features(row)
    logits = bias + D[feats].sum(axis=0)
    for i, p in enumerate(pairs):
        if len(p):
            slot_of, Um = p.slot_of(cat.universe.n_features)
            s = slot_of[feats]
            s = s[s >= 0]
            logits[i] += Um[0][np.ix_(s, s)].sum()
    return _sigmoid(logits)


def assert_single_ids_equal_batch(snap, universe, ids, privacy_k, options):
    """Assign of each id alone (the per-request path) against the batch of all: the same answers (propensities
    to 1e-12: the batch sums in its kernel's order), and propensities bit for bit those of the one-row
    computation as it was. Returns (batch result, single assignments)."""
    import dataclasses

    from segsrv.engine.assign import assign, compiled_catalog
    from segsrv.ops.assign import AssignQuery

    batch = assign(snap, AssignQuery(universe=universe, ids=ids, **options), privacy_k)
    single = _one_by_one(snap, universe, ids, privacy_k, **options)
    assert_same_assign(dataclasses.replace(batch, assignments=single), batch, tolerance=1e-12)
    if not options:  # memberships only: the very Membership objects
        assert [a.segments for a in single] == [a.segments for a in batch.assignments]
    else:
        u = snap.universe(universe)
        cat = compiled_catalog(snap, u)
        names = [sg.name for sg in cat.segments]
        for i, a in zip(ids, single):
            if a.found:
                want = _old_one_row_propensities(cat, int(u.rows_for_ids([i])[0]), options, privacy_k)
                got = {m.segment: m.propensity for m in a.segments if not m.member}
                assert got == {n: float(want[j]) for j, n in enumerate(names) if n in got}, i
    return batch, single


def assert_same_relate(sharded, whole) -> None:
    """Counts bit for bit, statistics to 1e-12, hit by hit in the same order (features by name: the
    shards' dictionary may hold values the unsharded build left out, so ids may differ)."""
    assert (sharded.n_rows, sharded.n_condition, sharded.n_matching, sharded.suppressed, sharded.suppressed_hits) \
        == (whole.n_rows, whole.n_condition, whole.n_matching, whole.suppressed, whole.suppressed_hits)
    assert [(h.field, h.value) for h in sharded.hits] == [(h.field, h.value) for h in whole.hits]
    for hs, hw in zip(sharded.hits, whole.hits):
        assert set(hs.stats) == set(hw.stats)
        for name, value in hw.stats.items():
            if name in ("support", "n_feature"):
                assert hs.stats[name] == value, (hw.field, hw.value, name)
            elif math.isnan(value):
                assert math.isnan(hs.stats[name]), (hw.field, hw.value, name)
            else:
                assert hs.stats[name] == pytest.approx(value, rel=1e-12, abs=1e-12), (hw.field, hw.value, name)


# ----------------------------------------------------------------------------
# random conditions (hypothesis)
# ----------------------------------------------------------------------------


def _num(x: float):
    return int(x) if float(x).is_integer() else float(x)


def build_where_strategy(u, bu=None, max_depth: int = 3):
    """A hypothesis strategy of random JSON `where` trees (depth <= max_depth) over the universe U's fields and
    values: terms, value lists, negations, ranges over raw numeric values and band labels, $and / $or / $not.
    The raw values to draw range bounds from are the oracle universe BU's (PetNord), or U's own stored raw
    values when BU is None (any other snapshot)."""
    fields = sorted(u.fields)
    raw_fields = sorted(f for f in fields if u.fields[f].numeric is not None)
    raw_values = {}
    for f in raw_fields:
        raw = np.asarray(bu.fields[f].raw if bu is not None else u.fields[f].numeric)
        x = np.unique(raw[~np.isnan(raw)])
        pick = x[np.linspace(0, len(x) - 1, min(len(x), 40)).astype(int)]
        raw_values[f] = sorted({_num(v) for v in pick} | {_num(e) for e in u.fields[f].edges or []})

    def value(f):
        vals = u.fields[f].values
        base = st.sampled_from(vals)
        if set(vals) <= {"true", "false"}:
            return st.one_of(base, st.booleans())
        if raw_fields and f in raw_values:
            return st.one_of(base, st.sampled_from(raw_values[f]))  # band label or raw value
        return base

    field = st.sampled_from(fields)
    term = field.flatmap(lambda f: value(f).map(lambda v: {f: v}))
    any_of = field.flatmap(
        lambda f: st.lists(value(f), min_size=1, max_size=3).flatmap(
            lambda vs: st.sampled_from([{f: vs}, {f: {"$in": vs}}])
        )
    )
    ne = field.flatmap(lambda f: value(f).map(lambda v: {f: {"$ne": v}}))

    def bounds(f):
        b = st.sampled_from(raw_values[f]) | st.floats(
            min_value=float(min(raw_values[f])) - 1, max_value=float(max(raw_values[f])) + 1, allow_nan=False
        )
        lower = st.tuples(st.sampled_from([None, "$gte", "$gt"]), b)
        upper = st.tuples(st.sampled_from([None, "$lte", "$lt"]), b)

        def build(lu):
            (lo_op, lo), (hi_op, hi) = lu
            d = {}
            if lo_op:
                d[lo_op] = lo
            if hi_op:
                d[hi_op] = hi
            return {f: d or {"$gte": lo}}

        return st.tuples(lower, upper).map(build)

    leaves = [term, term, any_of, ne, st.sampled_from([{}, {"$all": True}])]
    if raw_fields:
        leaves.append(st.sampled_from(raw_fields).flatmap(bounds))
    leaf = st.one_of(*leaves)

    def merge(pair):
        a, b = pair
        if set(a) & set(b) or not a or not b:
            return {"$and": [a, b]}
        return {**a, **b}  # several keys in one object = AND

    def tree(depth):
        if depth == 0:
            return leaf
        sub = tree(depth - 1)
        return st.one_of(
            leaf,
            st.lists(sub, min_size=1, max_size=3).map(lambda xs: {"$and": xs}),
            st.lists(sub, min_size=1, max_size=3).map(lambda xs: {"$or": xs}),
            sub.map(lambda x: {"$not": x}),
            st.tuples(sub, sub).map(merge),
        )

    return tree(max_depth)


# ----------------------------------------------------------------------------
# sharded answers against unsharded ones
# ----------------------------------------------------------------------------


def sharded_services(sharded_path, snapshot, privacy_k: int = 0, **options):
    """(the service over the sharded build at ROOT/NAME, the service over the unsharded snapshot), with the
    same privacy floor and other SegmentationService options."""
    from segsrv.service import OneSnapshot, SegmentationService, local_service

    return (SegmentationService(local_service(sharded_path).snapshots, privacy_k=privacy_k, **options),
            SegmentationService(OneSnapshot(snapshot), privacy_k=privacy_k, **options))


def answer_or_error(service, make_query, obj):
    """service.call(make_query(obj)), or the error's (class name, message): errors must match over shards."""
    try:
        return service.call(make_query(json.loads(json.dumps(obj))))
    except Exception as exc:  # compared, not hidden
        return type(exc).__name__, str(exc)


def compare_over_shards(sharded, whole, objs, make_query, assert_same) -> int:
    """Each query of `objs` answered by both services: the same error, or assert_same(got, want). Returns
    how many were errors (the privacy floor's refusals among them)."""
    errors = 0
    for obj in objs:
        got, want = answer_or_error(sharded, make_query, obj), answer_or_error(whole, make_query, obj)
        if isinstance(want, tuple):
            assert got == want, obj
            errors += 1
        else:
            assert_same(got, want)
    return errors


def shop_services(directory: Path, n_customers: int, n_shards: int, privacy_k: int = 0):
    """`write_shop` in DIRECTORY built whole and with N shards: (the sharded build's service, the whole one's)."""
    from segsrv.service import OneSnapshot, SegmentationService, local_service
    from segsrv.snapshot.builder import build_snapshot
    from segsrv.snapshot.reader import open_snapshot
    from segsrv.snapshot.shardbuild import build_shards

    spec = write_shop(directory, n_customers=n_customers)
    whole = open_snapshot(build_snapshot(spec, directory / "whole", progress=quiet))
    build_shards(spec, directory / "sharded", n_shards, progress=quiet)
    sharded = local_service(directory / "sharded" / "shop").snapshots
    return (SegmentationService(sharded, privacy_k=privacy_k),
            SegmentationService(OneSnapshot(whole), privacy_k=privacy_k))


def assert_same_factors(got, want) -> None:
    """Two lists of Predict factors: evidence, kind, note, support and table equal; factor and p-values to
    1e-12 (relative)."""
    assert [(f.evidence, f.kind, f.note, f.support, f.table) for f in got] == \
        [(f.evidence, f.kind, f.note, f.support, f.table) for f in want]
    for g, w in zip(got, want):
        for a, b in ((g.factor, w.factor), (g.p_value, w.p_value), (g.log10_p_value, w.log10_p_value)):
            assert (a is None and b is None) or a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300), (g, w)


def assert_same_predict(got, want) -> float:
    """A Predict answer over shards against the unsharded one: counts, evidence, values, factors and the
    regularisation exactly, probabilities to 1e-12. Returns the largest probability difference seen."""
    assert (got.universe, got.target, got.multi_valued, got.method, got.n_segment, got.evidence,
            got.suppressed_values) == \
        (want.universe, want.target, want.multi_valued, want.method, want.n_segment, want.evidence,
         want.suppressed_values)
    assert got.regularisation == want.regularisation
    assert [(p.value, p.count) for p in got.probabilities] == [(p.value, p.count) for p in want.probabilities]
    largest = 0.0
    for g, w in zip(got.probabilities, want.probabilities):
        for a, b in ((g.probability, w.probability), (g.base_probability, w.base_probability),
                     (g.normalizer, w.normalizer)):
            assert a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15), (g.value, a, b)
            largest = max(largest, abs(a - b))
        assert_same_factors(g.factors, w.factors)
    return largest


def same_float(got: float, want: float, exact: bool = False) -> bool:
    """Equal floats: bit for bit when `exact`, else to 1e-12; NaN with NaN."""
    if math.isnan(want):
        return math.isnan(got)
    return got == want if exact else got == pytest.approx(want, rel=1e-12, abs=1e-12)


def assert_same_profile(sharded, whole) -> None:
    """Counts bit for bit, shares, lifts, p-values and strengths to 1e-12, fields and values in the same
    order; numeric summaries: count, min, max and percentiles exactly, mean and std to 1e-12."""
    assert (sharded.universe, sharded.n_rows, sharded.n_segment, sharded.suppressed, sharded.suppressed_values) == \
        (whole.universe, whole.n_rows, whole.n_segment, whole.suppressed, whole.suppressed_values)
    assert [f.field for f in sharded.fields] == [f.field for f in whole.fields]
    for fs, fw in zip(sharded.fields, whole.fields):
        assert same_float(fs.strength, fw.strength), fw.field
        for got, want in ((fs.over, fw.over), (fs.under, fw.under)):
            assert [(v.value, v.segment_count, v.population_count) for v in got] == \
                [(v.value, v.segment_count, v.population_count) for v in want], fw.field
            for vs, vw in zip(got, want):
                for name in ("segment_share", "population_share", "lift", "p_value"):
                    assert same_float(getattr(vs, name), getattr(vw, name)), (fw.field, vw.value, name)
    assert [p.field for p in sharded.numeric] == [p.field for p in whole.numeric]
    for ps, pw in zip(sharded.numeric, whole.numeric):
        for got, want in ((ps.segment, pw.segment), (ps.population, pw.population)):
            assert got.count == want.count, pw.field
            for name in ("min", "p25", "median", "p75", "max"):
                assert same_float(getattr(got, name), getattr(want, name), exact=True), (pw.field, name)
            for name in ("mean", "std"):
                assert same_float(getattr(got, name), getattr(want, name)), (pw.field, name)


def assert_same_info(sharded, whole) -> None:
    """The same universes, rows, fields, kinds and edges; every value the unsharded build lists with the same
    count (the shared dictionary may hold more values, each with count 0: docs/scale.md)."""
    assert sharded.name == whole.name and sharded.version.startswith("shards-")
    assert sharded.description == whole.description
    assert [u.name for u in sharded.universes] == [u.name for u in whole.universes]
    for us, uw in zip(sharded.universes, whole.universes):
        assert (us.table, us.key, us.n_rows) == (uw.table, uw.key, uw.n_rows)
        assert us.n_features >= uw.n_features
        assert [f.name for f in us.fields] == [f.name for f in uw.fields]
        for fs, fw in zip(us.fields, uw.fields):
            assert (fs.kind, fs.semantics, fs.has_raw_values, fs.edges) == \
                (fw.kind, fw.semantics, fw.has_raw_values, fw.edges), fw.name
            assert fs.n_values >= fw.n_values
            if fw.values is None:
                assert fs.values is None
                continue
            assert {v: fs.values[v] for v in fw.values} == fw.values, fw.name
            assert not any(c for v, c in fs.values.items() if v not in fw.values), fw.name


def exported(result) -> list[list[str]]:
    """The chunks of ids of an unranked Export."""
    return [ids for ids, scores in result.chunks() if scores is None]


def assert_same_scores(got, want) -> None:
    """Two ScoreSegment answers: the same members, ids, scores (bit for bit) and order; the mean to 1e-12."""
    assert (got.universe, got.target, got.value, got.n_members, got.regularisation) == \
        (want.universe, want.target, want.value, want.n_members, want.regularisation)
    assert got.ids == want.ids
    assert np.array_equal(got.scores, want.scores)
    assert got.mean_score == pytest.approx(want.mean_score, rel=1e-12) or \
        (math.isnan(got.mean_score) and math.isnan(want.mean_score))
    assert got.to_json()["scores"] == want.to_json()["scores"]  # the ids as the transport renders them
    assert got.version.startswith("shards-")


def evaluate_query(obj: dict):
    """EvaluateQuery.from_json, with `max_test_rows` (a Python caller's parameter, not a JSON key) set."""
    from segsrv.ops import EvaluateQuery

    cap = obj.pop("max_test_rows", None)
    query = EvaluateQuery.from_json(obj)
    query.max_test_rows = cap
    return query


def assert_same_evaluation(got, want) -> None:
    """Two Evaluate answers: the same JSON (but the time and version), test rows and probabilities bit for bit."""
    a, b = got.to_json(), want.to_json()
    for answer in (a, b):
        answer.pop("elapsed_ms")
        answer.pop("version")
    assert a == b
    assert np.array_equal(got.true_index, want.true_index) and np.array_equal(got.probabilities, want.probabilities)


def comparable(result) -> dict:
    """The JSON answer without what differs by design: the time taken and the version's name."""
    answer = result.to_json()
    assert isinstance(answer.pop("elapsed_ms"), float)
    answer.pop("version")
    return json.loads(json.dumps(answer))


def discover_outcome(service, obj: dict):
    """(the answer, None) or (None, the error) of a Discover request."""
    from segsrv.errors import SegsrvError
    from segsrv.ops import DiscoverQuery

    try:
        return service.call(DiscoverQuery.from_json(json.loads(json.dumps(obj)))), None
    except SegsrvError as err:
        return None, err


def assert_same_discover(sharded, whole, obj: dict):
    """The sharded service's Discover answer equals the unsharded one's (or both refuse the request with the
    same error); returns the sharded answer (None when refused)."""
    (got, got_error), (want, want_error) = discover_outcome(sharded, obj), discover_outcome(whole, obj)
    assert (type(got_error), str(got_error)) == (type(want_error), str(want_error)), obj
    if got is not None:
        assert got.version.startswith("shards-")
        assert_same_answer(comparable(got), comparable(want))
    return got


# ----------------------------------------------------------------------------
# every method over gRPC: one sharded build's server (segsrv serve, the Ray router) against another's
# ----------------------------------------------------------------------------

# what two builds with the same data may differ in (docs/scale.md): their name, version, times, the plans
# and candidate counts of the counting, storage per shard
BUILD_KEYS = frozenset({"snapshot", "version", "elapsed_ms", "plan", "n_candidates", "n_dense", "n_sparse",
                        "shards", "snapshots"})


def _without_build_keys(value):
    if isinstance(value, dict):
        return {k: _without_build_keys(v) for k, v in value.items() if k not in BUILD_KEYS}
    if isinstance(value, list):
        return [_without_build_keys(v) for v in value]
    return value


def every_method_answers(client) -> dict:
    """The JSON answers of a SegsrvClient to one small request of every method (no cross-validated fit:
    fixed l2 or the factorized method, so two servers' first calls stay quick), build keys left out and an
    unranked export's ids sorted (shards list them shard by shard)."""
    churned = {"from": "customers", "where": {"churned": True}}
    ids = sorted(client.export(churned))
    some = ids[:2] + ids[-1:] + ["no-such-customer"]
    ranked = client.export({"from": "customers", "where": {"region": "oulu"}, "target": "churned", "value": True,
                            "top_k": 5})
    answers = {
        "count": client.count(churned),
        "relate": client.relate({"from": "orders", "where": {"customer.churned": True}, "limit": 10}),
        "profile": client.profile({"from": "customers", "segment": {"churned": True},
                                   "fields": ["region", "lifestyle", "tenure_months"]}),
        "predict": client.predict({"from": "customers", "target": "churned", "id": ids[0], "method": "conjunction"}),
        "predict_factorized": client.predict({"from": "customers", "target": "lifestyle", "prior_strength": 5,
                                              "method": "factorized", "segment": {"region": "oulu"}}),
        "score": client.score_segment({"from": "customers", "target": "churned", "value": "true", "top_k": 5,
                                       "l2": 1}),
        "evaluate": client.evaluate({"from": "customers", "target": "churned", "l2": 1,
                                     "evidence_fields": ["region", "lifestyle"]}),
        "discover": client.discover({"from": "customers", "limit": 5}),
        "info": {k: v for k, v in client.snapshot_info("orders", include_values=True).items() if k != "name"},
        "segments": client.list_segments(),
        "assign": client.assign(some, universe="customers"),
        "export": {"total": len(ids), "ids": ids},
        "export_ranked": list(ranked.members()),
    }
    return _without_build_keys(answers)


def assert_same_answers(got: dict, want: dict) -> None:
    """every_method_answers of two servers: equal, floats to 1e-12 (relative); a difference names its path."""
    _assert_same(got, want, "answers")


def _assert_same(got, want, path: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (path, sorted(set(got) ^ set(want)))
        for key in want:
            _assert_same(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), (path, got, want)
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-300, nan_ok=True), (path, got, want)
    else:
        assert got == want, (path, got, want)


# universe name -> oracle_masks (the session's oracle is one, over PetNord's source tables)
_MASKS: dict[str, np.ndarray] = {}


def oracle_masks(u, bu) -> np.ndarray:
    """bool[n_features, n_rows]: each feature's rows by the oracle (source tables, not the snapshot)."""
    if u.name not in _MASKS:
        _MASKS[u.name] = np.array([bu.feature_mask(*u.feature_name(fid)) for fid in range(u.n_features)], dtype=bool)
    return _MASKS[u.name]


def as_bits(mask: np.ndarray) -> np.ndarray:
    """The condition bitset of a row mask (bit r of word r >> 6)."""
    padded = np.zeros(-(-len(mask) // 64) * 64, dtype=bool)
    padded[:len(mask)] = mask
    return np.packbits(padded, bitorder="little").view(np.uint64).copy()


def compact(indptr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(block_base, within) of a CSR's row pointer, the compact form's pointers (segsrv.engine.compact_csr):
    blocks of COMPACT_BLOCK_ROWS rows."""
    from segsrv._kernels import COMPACT_BLOCK_ROWS

    block_base = np.ascontiguousarray(indptr[::COMPACT_BLOCK_ROWS])
    within = (indptr - block_base[np.arange(len(indptr)) // COMPACT_BLOCK_ROWS]).astype(np.uint16)
    return block_base, within
