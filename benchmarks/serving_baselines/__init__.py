"""Baseline servers for ``bench_serving.py``: the same Bundle graph behind a bare ASGI app and
behind plain FastAPI, so tandem's server is measured against a floor and a common default.

Each app loads the models named in ``BENCH_SERVE_MODELS`` (space-separated registry names,
default ``"w1 gbdt"``) from the registry ``TANDEM_HOME`` points at, when its module is imported.
"""
