"""Keep numba out of processes that never ask for word timestamps (56 MB of RSS each).

openai-whisper imports numba (with LLVM) when ``import whisper`` runs, only to jit two helpers of
word-level timestamps in ``whisper.timing``; this project's transcription never asks for those. While
``whisper.timing`` executes, ``numba`` resolves to a stand-in whose ``jit`` defers the compilation:
the first call of a jitted helper imports numba for real and jits every deferred function of that
module, so numba-compiled code calling another one (``dtw_cpu`` calls ``backtrace``) still sees
dispatchers. Any other attribute of the stand-in imports numba too. Outside that one module
``numba`` is never replaced, and nothing changes when numba was imported first.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

TARGET = "whisper.timing"


def _real_numba() -> types.ModuleType:
    if isinstance(sys.modules.get("numba"), _DeferredNumba):
        del sys.modules["numba"]
    return importlib.import_module("numba")


class _Deferred:
    """A function waiting for ``numba.jit(*args, **options)`` until its first call."""

    def __init__(self, func: Callable, args: tuple, options: dict) -> None:
        self.func, self.args, self.options = func, args, options
        self.__wrapped__ = func
        self.__name__, self.__doc__ = func.__name__, func.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        numba = _real_numba()
        scope = self.func.__globals__
        for name, value in list(scope.items()):
            if isinstance(value, _Deferred):
                scope[name] = numba.jit(*value.args, **value.options)(value.func)
        return scope[self.__name__](*args, **kwargs)


class _DeferredNumba(types.ModuleType):
    def __init__(self) -> None:
        super().__init__("numba")

    def jit(self, *args: Any, **options: Any) -> Any:
        if len(args) == 1 and callable(args[0]) and not options:  # bare @numba.jit
            return _Deferred(args[0], (), {})
        return lambda func: _Deferred(func, args, options)

    def __getattr__(self, name: str) -> Any:
        return getattr(_real_numba(), name)


class _Loader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        stand_in = _DeferredNumba()
        sys.modules["numba"] = stand_in
        try:
            self.loader.exec_module(module)
        finally:
            if sys.modules.get("numba") is stand_in:
                del sys.modules["numba"]


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, name: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != TARGET or "numba" in sys.modules:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Defer numba for a ``whisper.timing`` imported from now on (idempotent)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def uninstall() -> None:
    """Stock openai-whisper behaviour again for later imports (the benchmark's reference row)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]
