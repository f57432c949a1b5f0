"""Report fixtures: a PetNord snapshot with a declared model and two catalog versions (for drift),
and a reader of the data a report embeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import CATALOG_A, CATALOG_B, CHURN_MODEL, Oracle, Source, embedded_data, quiet

@pytest.fixture(scope="session")
def report_spec(tmp_path_factory, petnord_spec_path) -> Path:
    """specs/petnord.toml with absolute data paths and CHURN_MODEL declared as [models.churn]."""
    data = (petnord_spec_path.parent / "../../shared/data/petnord").resolve()
    text = petnord_spec_path.read_text().replace("../../shared/data/petnord", str(data))
    model = "\n[models.churn]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in CHURN_MODEL.items()) + "\n"
    path = tmp_path_factory.mktemp("report_spec") / "petnord.toml"
    path.write_text(text + model)
    return path


@pytest.fixture(scope="session")
def report_root(tmp_path_factory, report_spec) -> tuple[Path, str, str]:
    """(ROOT, version A, version B): PetNord with the churn model, CATALOG_A applied as version A and
    CATALOG_B as version B (CURRENT)."""
    from segsrv.engine.catalog import apply_segments
    from segsrv.engine.predict.models import fit_declared_models
    from segsrv.snapshot.builder import build_snapshot

    root = tmp_path_factory.mktemp("report_root")
    build_snapshot(report_spec, root, progress=quiet, fit_models=fit_declared_models)
    vdir_a, _ = apply_segments(root / "petnord", CATALOG_A, progress=quiet, fit_propensities=False)
    vdir_b, _ = apply_segments(root / "petnord", CATALOG_B, progress=quiet, fit_propensities=False)
    return root, vdir_a.name, vdir_b.name


@pytest.fixture(scope="session")
def report_oracle(report_root, petnord_spec_path) -> Oracle:
    """The pandas brute-force oracle over PetNord's source tables, with the report snapshot's field list."""
    from segsrv.snapshot.reader import open_snapshot

    return Oracle(Source(petnord_spec_path), open_snapshot(report_root[0]))


@pytest.fixture
def read_report():
    """read_report(path) -> the data embedded in the report at PATH."""
    return lambda path: embedded_data(Path(path).read_text(encoding="utf-8"))
