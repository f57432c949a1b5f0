"""Every runnable example of README.md and docs/*.md runs, as written, against the snapshot its page names.

A page names the snapshot of its examples with `<!-- examples: demo -->` or `<!-- examples: petnord -->`
(`<!-- examples: petnord after docs/segments.md -->`: its examples need what that page's examples do,
e.g. the catalog they publish, and run after them). A comment on the line before a code block overrides
the page for that block (`<!-- example: petnord -->`), runs a JSON query block through the CLI
(`<!-- example: query relate -->`), makes the block a file the page's examples use (`<!-- example: file
NAME -->`: written before any example runs) or says why it is not run (`<!-- example: not run: REASON
-->`; the reason is printed). A JSON block marked `<!-- example: output -->` shows (part of) the answer
of the page's previous example, a `query OP`: every key it shows, at every depth (lists by their first
element, `"..."` keys left out), must be in the real answer. Runnable: ```bash blocks with a line starting `segsrv `, ```python blocks
that use segsrv, and JSON blocks marked `query OP`. README.md "Examples in these docs" documents the
markers and the placeholders substituted here: nothing else is.

The examples of a page run in its own directory (files they write stay apart) of a workspace holding the
documented paths: `demo/snapshots-100000` (the README's demo root; here a 5,000-customer demo, same
fields and values) and `snapshots/petnord` (a copy of the session's PetNord build: examples publish new
versions into it), and the repository's `specs/` (its data paths lead to ../shared, as in a checkout). An example with `--addr` or a client talks to a real `segsrv serve` of its snapshot;
the documented address `127.0.0.1:50051` / `localhost:50051` becomes that server's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO, ServeProcess, quiet, repo_env

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SNAPSHOTS = ("demo", "petnord")
DOC_ADDRESSES = ("127.0.0.1:50051", "localhost:50051")
DEMO_ROOT = "demo/snapshots-100000"  # the README's: `bash scripts/demo.sh` builds it
DEMO_CUSTOMERS = 5000
PAGE_MARKER = re.compile(r"^<!--\s*examples:\s*(\S+)(?:\s+after\s+(\S+))?\s*-->$", re.M)
BLOCK = re.compile(r"^(?:<!--\s*example:\s*(?P<marker>[^\n]*?)\s*-->\n)?```(?P<lang>[\w-]*)\n(?P<body>.*?)^```",
                   re.S | re.M)


@dataclasses.dataclass(frozen=True)
class Example:
    page: str
    line: int
    lang: str  # bash, python, `query OP` for a JSON query, or `file NAME`
    body: str
    snapshot: str
    not_run: str | None  # the reason, when the page says the block is not run
    shows: str | None = None  # the answer (part of it) the page shows after the example, as JSON text

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def directory(self) -> str:
        """The page's working directory in the workspace."""
        return "pages/" + self.page.replace("/", "_").removesuffix(".md")


def extract(page: Path) -> tuple[list[Example], list[str], str | None]:
    """The runnable examples of PAGE, its problems (a runnable block without a snapshot, a bad marker) and
    the page whose examples must run first."""
    text = page.read_text()
    rel = str(page.relative_to(REPO)) if page.is_relative_to(REPO) else page.name
    found = PAGE_MARKER.search(text)
    default, after = found.groups() if found else (None, None)
    examples, problems = [], []
    if after and not (REPO / after).is_file():
        problems.append(f"{rel}: its examples run after {after!r}, which is no page of the repository")
    for m in BLOCK.finditer(text):
        lang, body, marker = m.group("lang"), m.group("body"), (m.group("marker") or "").strip()
        line = text.count("\n", 0, m.start("lang")) + 1
        snapshot, not_run = default, None
        if marker == "output" and lang == "json":
            if not examples or not examples[-1].lang.startswith("query "):
                problems.append(f"{rel}:{line}: an output block that follows no `query OP` example")
            else:
                examples[-1] = dataclasses.replace(examples[-1], shows=body)
            continue
        if marker.startswith("not run:"):
            not_run = marker.removeprefix("not run:").strip()
            marker = ""
        words = marker.split()
        if words and words[0] in SNAPSHOTS:
            snapshot, words = words[0], words[1:]
        if words[:1] == ["query"] and len(words) == 2 and lang == "json":
            lang = f"query {words[1]}"
        elif words[:1] == ["file"] and len(words) == 2:
            lang = f"file {words[1]}"
        elif words:
            problems.append(f"{rel}:{line}: unknown example marker {marker!r} (expected a snapshot "
                            f"{SNAPSHOTS}, 'query OP' or 'output' on a json block, 'file NAME' or 'not run: REASON')")
            continue
        runnable = ((lang in ("bash", "sh") and re.search(r"^segsrv ", body, re.M))
                    or (lang == "python" and "segsrv" in body.lower()) or lang.startswith(("query ", "file ")))
        if not runnable:
            continue
        if snapshot not in SNAPSHOTS and not not_run:
            problems.append(f"{rel}:{line}: a runnable example on a page that names no snapshot "
                            f"(add <!-- examples: demo --> or <!-- examples: petnord --> to the page)")
            continue
        examples.append(Example(rel, line, lang, body, snapshot, not_run))
    return examples, problems, after


EXTRACTED = [extract(p) for p in PAGES]
# pages that run after another page last (one level is all the docs need), else in PAGES order
EXAMPLES = [e for examples, _, after in sorted(EXTRACTED, key=lambda x: x[2] is not None) for e in examples
            if not e.lang.startswith("file ")]
FILES = [e for examples, _, _ in EXTRACTED for e in examples if e.lang.startswith("file ")]


def test_every_page_with_examples_names_its_snapshot():
    assert [p for _, problems, _ in EXTRACTED for p in problems] == []


def test_the_extractor_finds_the_examples_and_their_snapshots():
    by_id = {e.id: e for e in EXAMPLES}
    readme = [e for e in EXAMPLES if e.page == "README.md"]
    assert {e.lang for e in readme} >= {"bash", "python"} and {e.snapshot for e in readme} == {"demo"}
    assert any(e.lang.startswith("query ") for e in by_id.values())
    assert len(by_id) == len(EXAMPLES) > 20


def test_extract_reads_the_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("""# A page

<!-- examples: petnord after docs/segments.md -->

```bash
segsrv info snapshots/petnord
```

<!-- example: demo query relate -->
```json
{"from": "customers"}
```

<!-- example: output -->
```json
{"hits": []}
```

<!-- example: file catalog.toml -->
```toml
[segments.a]
```

<!-- example: not run: needs a cluster -->
```bash
segsrv serve --snapshots snapshots
```

```bash
echo no segsrv command here
```

<!-- example: petnrod -->
```python
import segsrv
```
""")
    examples, problems, after = extract(page)
    assert after == "docs/segments.md"
    assert [(e.line, e.lang, e.snapshot, e.not_run, e.shows) for e in examples] == [
        (5, "bash", "petnord", None, None),
        (10, "query relate", "demo", None, '{"hits": []}\n'),
        (20, "file catalog.toml", "petnord", None, None),
        (25, "bash", "petnord", "needs a cluster", None),
    ]
    assert problems == ["page.md:34: unknown example marker 'petnrod' (expected a snapshot ('demo', 'petnord'), "
                        "'query OP' or 'output' on a json block, 'file NAME' or 'not run: REASON')"]
    page.write_text("```python\nimport segsrv\n```\n")
    assert "names no snapshot" in extract(page)[1][0]


def test_few_examples_are_not_run():
    not_run = [e for e in EXAMPLES if e.not_run]
    for e in not_run:
        print(f"not run: {e.id}: {e.not_run}")
    assert len(not_run) <= 6, [e.id for e in not_run]


# ----------------------------------------------------------------------------
# the workspace, its servers
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, petnord_root) -> Path:
    from segsrv.demo.generate import generate_demo
    from segsrv.snapshot.builder import build_snapshot

    ws = tmp_path_factory.mktemp("docs_examples")
    data = ws / "demo" / f"data-{DEMO_CUSTOMERS}"
    generate_demo(data, DEMO_CUSTOMERS, progress=quiet)
    build_snapshot(data / "spec.toml", ws / DEMO_ROOT, progress=quiet)
    # a copy: examples publish catalogs (segments apply), the session's PetNord build must stay as it is
    shutil.copytree(petnord_root, ws / "snapshots", symlinks=True)
    for vdir in (ws / "snapshots").rglob("*"):
        if vdir.is_dir():
            vdir.chmod(0o755)  # published files are read-only, the copy's directories must take new versions
    for page in {e.directory for e in EXAMPLES + FILES}:
        (ws / page).mkdir(parents=True)
        for shared in ("demo", "snapshots"):
            (ws / page / shared).symlink_to(ws / shared)
        (ws / page / "specs").symlink_to(REPO / "specs")  # `segsrv build specs/petnord.toml`, as in a checkout
    for f in FILES:
        (ws / f.directory / f.lang.removeprefix("file ")).write_text(f.body)
    bin_dir = ws / ".bin"
    bin_dir.mkdir()
    (bin_dir / "segsrv").write_text(f'#!/bin/sh\nexec {sys.executable} -m segsrv "$@"\n')
    (bin_dir / "segsrv").chmod(0o755)
    return ws


@pytest.fixture(scope="module")
def servers(workspace, tmp_path_factory):
    """snapshot -> the address of a lazily started `segsrv serve` of its root (one worker), once it serves
    the CURRENT version: an earlier example may have just published one (segments apply), which the server
    picks up within its 1 s watch."""
    roots = {"demo": workspace / DEMO_ROOT, "petnord": workspace / "snapshots"}
    started: dict[str, ServeProcess] = {}
    logs = tmp_path_factory.mktemp("docs_servers")

    def address(snapshot: str) -> str:
        if snapshot not in started:
            started[snapshot] = ServeProcess(roots[snapshot], logs / f"{snapshot}.log")
        current = (roots[snapshot] / snapshot / "CURRENT").read_text().strip()
        started[snapshot].wait_for_line(rf"(loaded snapshot {snapshot} version|swapped snapshot {snapshot} to version) "
                                        rf"{current}\b")
        return started[snapshot].address

    yield address
    for server in started.values():
        server.close()


def missing_keys(shown, actual, path: str = "") -> list[str]:
    """The keys SHOWN has at any depth that ACTUAL lacks (lists compared by their first elements)."""
    if isinstance(shown, dict) and isinstance(actual, dict):
        return [miss for key, value in shown.items() if key != "..."
                for miss in ([f"{path}.{key}"] if key not in actual else missing_keys(value, actual[key], f"{path}.{key}"))]
    if isinstance(shown, list) and isinstance(actual, list) and shown and actual:
        return missing_keys(shown[0], actual[0], f"{path}[0]")
    return []


def test_missing_keys_reads_nested_answers():
    shown = {"a": 1, "fields": [{"over": [{"lift": 2, "...": "..."}]}], "n": {"mean": 1, "p99": 2}}
    actual = {"a": 0, "fields": [{"over": [{"lift": 1.5, "p_value": 0.1}]}], "n": {"mean": 3}}
    assert missing_keys(shown, actual) == [".n.p99"]
    assert missing_keys(shown, {"a": 0, "fields": [], "n": {"mean": 3, "p99": 1}}) == []


def with_address(code: str, address: str) -> str:
    for doc_address in DOC_ADDRESSES:
        code = code.replace(doc_address, address)
    return code


def uses_server(example: Example) -> bool:
    return any(a in example.body for a in DOC_ADDRESSES)


def run_shell(script: str, workspace: Path, directory: str) -> str:
    """SCRIPT's stdout; it must exit 0."""
    env = repo_env()
    env["PATH"] = f"{workspace / '.bin'}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=workspace / directory, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- script\n{script}\n--- stderr\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_example_runs_as_written(example, workspace, servers, monkeypatch):
    if example.not_run:
        print(f"not run: {example.id}: {example.not_run}")
        return
    code = example.body
    if uses_server(example):
        code = with_address(code, servers(example.snapshot))
    if example.lang == "bash":
        run_shell(code, workspace, example.directory)
    elif example.lang.startswith("query "):
        root = DEMO_ROOT if example.snapshot == "demo" else "snapshots/petnord"
        answer = run_shell(f"segsrv {example.lang} --local {root} --json - <<'QUERY'\n{code}QUERY\n", workspace,
                           example.directory)
        if example.shows:
            assert missing_keys(json.loads(example.shows), json.loads(answer)) == []
    else:
        monkeypatch.chdir(workspace / example.directory)
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, example.id, "exec"), {"__name__": "__doc_example__"})
