"""Real-time serving: ``tandem serve`` (see :mod:`tandem.serving.server`).

Layers, each in its own module: ``http`` (sockets to requests), ``app`` (routes, auth,
metrics), ``oip`` and ``mlflow`` (the two protocols), ``batcher`` (queue, dynamic batches,
deadlines), ``models`` (loading, warm-up, alias following). Imports no training library.
"""

from tandem.serving.batcher import BatcherConfig
from tandem.serving.server import ServeOptions, Server, serve

__all__ = ["BatcherConfig", "ServeOptions", "Server", "serve"]
