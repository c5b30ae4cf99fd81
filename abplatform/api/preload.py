"""Start API workers by fork from a parent that imported the app once, instead of by spawn.

uvicorn starts each worker as a fresh interpreter (``spawn``) that imports the CLI and the
app again: with two workers starting at once on two cores that is about 3 s before the
first answer. Forked from a parent that has imported the app (and what loading a
registered model needs), each worker only builds the app and runs its start-up; the pages
of the imported modules are shared.

Forking is only safe from a single-threaded parent, and uvicorn's supervisor is one (it
waits on an event in its main thread). Nothing is forked with a database connection
open: `abplatform serve` disposes of its engine before the workers start, and every worker
opens its own. TensorFlow is never imported here (`strategies.registered` loads artifacts
with NumPy only); if it were, the workers would fall back to ``spawn``.
"""

from __future__ import annotations

import importlib
import multiprocessing
import sys
import threading

PRELOADED = (
    "abplatform.api.app",
    "strategies.served",
    "strategies.registered",
    "strategies.snapshot",
    "strategies.two_tower.strategy",
    "strategies.ranker.strategy",
    "alembic.command",
    "alembic.script",
)
"""Modules every worker imports while it starts (the app, model loading, the schema check)."""


def use_forked_workers() -> bool:
    """Import `PRELOADED` and make uvicorn fork its workers; False (spawn kept) if unsafe."""
    if not hasattr(multiprocessing, "get_all_start_methods") or (
        "fork" not in multiprocessing.get_all_start_methods()
    ):
        return False
    for name in PRELOADED:
        importlib.import_module(name)
    if threading.active_count() > 1 or "tensorflow" in sys.modules:
        return False
    import uvicorn._subprocess as subprocess  # uvicorn 0.54: its workers' start context

    subprocess.spawn = multiprocessing.get_context("fork")  # type: ignore[assignment]
    return True
