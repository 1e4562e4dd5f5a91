"""The black-box merge service (docs/methods.md §1): the provider holds the model and the pool, the
user sends control vectors and gets back losses or text, never a weight.

- :func:`create_app` builds the FastAPI app over a :class:`ProviderState` and :class:`ServiceSettings`;
- :class:`RemoteMergeService` is the search's ``Evaluator`` over HTTP;
- :class:`ServerThread` runs the app under uvicorn in a thread (tests, in-process use);
- ``python -m evojax_merge.service {serve,export,loadtest}`` is the command line.

Names are imported lazily: the client side never loads FastAPI or uvicorn.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "create_app": "app",
    "RemoteMergeService": "client",
    "RemoteServiceError": "client",
    "ProviderState": "provider",
    "load_provider": "provider",
    "ServiceSettings": "settings",
    "load_api_keys": "settings",
    "ServerThread": "server",
    "run_loadtest": "loadtest",
    "LoadTestReport": "loadtest",
    "export_genome": "export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"evojax_merge.service.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'evojax_merge.service' has no attribute {name!r}")
