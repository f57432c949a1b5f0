"""The gRPC server: servicer (convert -> engine -> convert), errors table, registry, app.

    from segsrv.server import create_server
    server, port = create_server("snapshots", port=0)
    server.start()
"""

from .app import create_server, serve

__all__ = ["create_server", "serve"]
