"""Serving a saved index over HTTP: a JSON API, a web page, dynamic batching (`python -m
dualenc.serve`; the command is `__main__`, which no library module imports).

`SearchEngine` (engine) answers query batches with fixed shapes; `DynamicBatcher` (batcher)
gathers concurrent requests into those batches; `create_app` (app) is the FastAPI app with the
page from `static/`; `ServeConfig` (config) holds the limits and buckets.
"""

from dualenc.serve.config import ServeConfig
from dualenc.serve.engine import Query, SearchEngine, compile_count

__all__ = ["Query", "SearchEngine", "ServeConfig", "compile_count", "create_app"]


def create_app(engine):
    """The FastAPI app (imported lazily: the engine does not need the web stack)."""
    from dualenc.serve.app import create_app as make

    return make(engine)
