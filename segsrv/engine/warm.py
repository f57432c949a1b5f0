"""What a server does to a version before serving it, so its first requests cost what later ones do:
build each universe's compact sparse CSR (segsrv.engine.compact_csr), compile the segment catalog and
load its stored default propensity models (segsrv.engine.assign), assign one customer with propensities
where they are stored, and answer each stored model's question once (segsrv.engine.predict.models).
Nothing is fitted: stored models are read."""

from __future__ import annotations

from ..errors import SegsrvError
from ..ops.assign import AssignQuery
from ..ops.count import CountQuery
from .assign import assign, compiled_catalog, warm_catalog
from .compact_csr import compact_sparse_csr
from .predict.models import WARM_CALLS, warm_models


def warm_snapshot(snapshot, answer=None) -> dict:
    """{universe: catalog segments compiled, ..., "models": stored models warmed (when any)}.
    answer: runs a query the way a request does (the server passes its service's `call`, so the
    service layer's code is warm too: measured, its first Assign cost 0.6 ms against 0.1 ms later);
    default: the engine's functions."""
    for universe in snapshot.universes.values():  # the rows method's index, built before the first request
        compact_sparse_csr(universe)
    info: dict = dict(warm_catalog(snapshot))
    run_assign = answer if answer is not None else (lambda q: assign(snapshot, q))
    for name in info:  # Assigns with propensities per catalog universe: first-call costs paid here
        u = snapshot.universes[name]
        if u.n_rows and compiled_catalog(snapshot, u).stored_default():
            for _ in range(WARM_CALLS):
                run_assign(AssignQuery(universe=name, ids=u.ids_for_rows([0]), include_propensities=True))
    n_models = warm_models(snapshot, answer)
    if n_models:
        info["models"] = n_models
    return info


def warm_sharded(sharded, answer) -> dict:
    """{universe: rows over the shards} of a sharded build (segsrv/engine/sharded/), before it is served:
    each universe's merged summary (which shards hold it, summed feature counts: it hashes every shard's
    row ids, the cost of a first request), then one Count per universe through `answer` (the server's
    service). Shards carry no segment catalog, so there is no catalog to compile. An operation the service
    does not answer over shards yet is skipped (its SegsrvError), so warm-up keeps working as more land."""
    info: dict = {}
    for name in sharded.schema.universes:
        info[name] = sharded.universe(name).n_rows
        try:
            answer(CountQuery(universe=name))
        except SegsrvError:
            pass  # e.g. the privacy floor refused it: its code ran all the same
    return info
