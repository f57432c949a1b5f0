"""`segsrv build SPEC --shards N --ray ADDRESS`: the shards built as Ray tasks equal the local build's."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

from segsrv.ray.build import ray_map_shards
from segsrv.snapshot.shardbuild import build_shards
from segsrv.snapshot.shards import SHARDS
from support import REPO, quiet, repo_env


def manifest(location) -> dict:
    return json.loads((location / SHARDS).read_text())


def test_ray_build_equals_the_local_build_and_reuses_unchanged_shards(ray_instance, petnord_spec, petnord_sharded4,
                                                                       shard_count, tmp_path):
    spec = replace(petnord_spec, shard_entity="customers")
    said: list[str] = []
    path = build_shards(spec, tmp_path, shard_count, progress=said.append, threads=1,
                        map_shards=ray_map_shards("local", 1))
    assert path == tmp_path / "petnord" / SHARDS
    assert manifest(tmp_path / "petnord") == manifest(petnord_sharded4)  # versions, checksums, fingerprints
    assert [m for m in said if m.startswith("shard ")] == [
        f"shard {i + 1}/{shard_count} (shard-{i:03d}): built version {e['version']}"
        for i, e in enumerate(manifest(petnord_sharded4)["shards"])]
    # again, input unchanged: every shard's task finds its fingerprint in SHARDS and reuses its version
    said.clear()
    build_shards(spec, tmp_path, shard_count, progress=said.append, threads=1, map_shards=ray_map_shards("local", 1))
    assert sum("unchanged, reused" in m for m in said) == shard_count
    assert manifest(tmp_path / "petnord") == manifest(petnord_sharded4)


def _sharded_petnord_spec(tmp_path):
    """specs/petnord.toml with [shards] entity = "customers", its data paths made absolute."""
    text = (REPO / "specs" / "petnord.toml").read_text()
    shared = (REPO / "specs" / "../../shared").resolve()
    spec = tmp_path / "petnord.toml"
    spec.write_text(text.replace('"../../shared/', f'"{shared}/') + '\n[shards]\nentity = "customers"\n')
    return spec


def test_cli_build_with_ray(ray_instance, shard_count, tmp_path):
    """The CLI joins the running instance by its address; progress as the local build prints it."""
    address = ray_instance.get_runtime_context().gcs_address
    spec = _sharded_petnord_spec(tmp_path)
    build_shards(spec, tmp_path / "local", shard_count, progress=quiet)  # the spec's text is part of each shard
    done = subprocess.run([sys.executable, "-m", "segsrv", "build", str(spec), "--out",
                           str(tmp_path / "out"), "--shards", str(shard_count), "--ray", address], capture_output=True,
                          text=True, env=repo_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "out" / "petnord" / SHARDS)
    for i, entry in enumerate(manifest(tmp_path / "local" / "petnord")["shards"]):
        assert f"[build] shard {i + 1}/{shard_count} (shard-{i:03d}): built version {entry['version']}" in done.stderr
    assert manifest(tmp_path / "out" / "petnord") == manifest(tmp_path / "local" / "petnord")


def test_ray_flag_errors(tmp_path):
    spec = _sharded_petnord_spec(tmp_path)

    def cli(*args, code=""):
        return subprocess.run([sys.executable, "-c", code + "import sys; from segsrv.cli import main; "
                               "sys.exit(main(sys.argv[1:]))", *args], capture_output=True, text=True, env=repo_env(),
                              timeout=120)

    done = cli("build", str(spec), "--out", str(tmp_path / "out"), "--ray", "local")
    assert done.returncode == 1 and "--ray: only with --shards" in done.stderr
    # Ray missing: the extra's name, not an ImportError
    done = cli("build", str(spec), "--out", str(tmp_path / "out"), "--shards", "2", "--ray", "local",
               code="import sys; sys.modules['ray'] = None; ")
    assert done.returncode == 1 and "Ray is not installed: pip install segsrv[ray]" in done.stderr, done.stderr
    done = cli("serve-ray", "--snapshots", str(tmp_path), "--shards-per-replica", "1", "--address", "local",
               code="import sys; sys.modules['ray'] = None; ")
    assert done.returncode == 1 and "Ray is not installed: pip install segsrv[ray]" in done.stderr, done.stderr


def test_the_single_box_server_and_the_engine_do_not_import_ray():
    code = ("import sys; import segsrv.cli, segsrv.service, segsrv.server.app, segsrv.engine.sharded, segsrv.client; "
            "segsrv.cli.build_parser(); print('ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=repo_env(), timeout=120)
    assert done.stdout.strip() == "False", done.stderr
