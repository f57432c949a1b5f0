"""segsrv on a Ray cluster (docs/scale.md, "On a Ray cluster"): the optional extra ``pip install segsrv[ray]``.

* ``build``: ``segsrv build SPEC --shards N --ray ADDRESS``, the shard builds as Ray tasks
  (segsrv/snapshot/shardbuild.py with a Ray executor);
* ``serve``: ``segsrv serve-ray``, Ray Serve deployments: shard replicas and a router that answers the
  segsrv.v1 gRPC service over them with the in-process merge (segsrv/engine/sharded/).

Nothing outside this package imports Ray: the single-box server and the engine run without it, and the CLI
imports this package only for the two commands above.
"""

from __future__ import annotations

from ..errors import SegsrvError

INSTALL_HINT = "pip install segsrv[ray]"


def require_ray():
    """The ray module, or a SegsrvError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SegsrvError(f"Ray is not installed: {INSTALL_HINT} (the optional extra that `segsrv build --ray` "
                          f"and `segsrv serve-ray` need; docs/scale.md)") from None
    return ray


def connect(address: str):
    """Join the Ray cluster at ADDRESS ("auto": the one this node belongs to, "ray://HOST:10001": a remote
    cluster through Ray Client, "local": start a Ray instance in this process for this run); a process
    already connected (ray.init called before) keeps its connection. Returns the ray module."""
    ray = require_ray()
    if not address:
        raise SegsrvError("--ray: expected a Ray address: auto, ray://HOST:PORT or local")
    if not ray.is_initialized():
        try:
            if address == "local":
                ray.init(include_dashboard=False)
            else:
                ray.init(address=address)
        except ConnectionError as exc:
            raise SegsrvError(f"no Ray cluster at {address!r} ({exc}); start one (ray start --head), name its "
                              f"address, or use local") from None
    return ray
