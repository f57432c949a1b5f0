"""What a server does to a version before serving it, so its first requests cost what later ones do:
compile the segment catalog and load its stored default propensity models (segsrv.engine.assign), assign one
customer with propensities where they are stored, and answer each stored model's question once
(segsrv.engine.predict.models). Nothing is fitted: stored models are read."""

from __future__ import annotations

from ..ops.assign import AssignQuery
from .assign import assign, compiled_catalog, warm_catalog
from .predict.models import warm_models


def warm_snapshot(snapshot) -> dict:
    """{universe: catalog segments compiled, ..., "models": stored models warmed (when any)}."""
    info: dict = dict(warm_catalog(snapshot))
    for name in info:  # one Assign with propensities per catalog universe: first-call costs paid here
        u = snapshot.universes[name]
        if u.n_rows and compiled_catalog(snapshot, u).stored_default():
            assign(snapshot, AssignQuery(universe=name, ids=u.ids_for_rows([0]), include_propensities=True))
    n_models = warm_models(snapshot)
    if n_models:
        info["models"] = n_models
    return info
