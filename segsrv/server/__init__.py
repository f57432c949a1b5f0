"""The gRPC server: the servicer (an adapter over segsrv.service), errors table, registry, app.

    from segsrv.server import create_server
    server, port = create_server("snapshots", port=0)
    server.start()

`create_server` and `serve` are imported lazily: the multi-process supervisor
(`segsrv.server.workers`) must fork before grpc (or numpy) starts threads.
"""

__all__ = ["create_server", "serve"]


def __getattr__(name):
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
