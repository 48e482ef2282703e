"""Old import paths, kept for one release: ``import harness.construct`` and the like still work
and warn (``DeprecationWarning``) with the new place. Plugins should import ``harness.api``.

A meta-path finder answers only the names in ``MOVED``; each becomes a thin module whose
attributes are looked up, in order, in the modules that now hold them.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

REMOVED_IN = "0.3"
MOVED: dict[str, tuple[str, ...]] = {
    "harness.corpus": ("harness.data.corpus",),
    "harness.retrieval": ("harness.data.retrieval",),
    "harness.ground_truth": ("harness.data.ground_truth",),
    "harness.scoring": ("harness.construction.scoring",),
    "harness.screening": ("harness.construction.screening",),
    "harness.construct": ("harness.construction.driver",),
    "harness.stage_data": ("harness.construction.stage_data",),
    "harness.memory": ("harness.training.memory",),
    "harness.evaluate": ("harness.evaluation.runner",),
    "harness.backends": ("harness.evaluation.backends",),
    "harness.vllm_engine": ("harness.evaluation.vllm_engine",),
    "harness.lm_eval_adapter": ("harness.evaluation.lm_eval_adapter",),
    "harness.probes": ("harness.evaluation.loss_gap",),
    "harness.compare": ("harness.experiments.compare",),
    "harness.study": ("harness.experiments.study",),
    "harness.tune": ("harness.experiments.tune",),
    "harness.report": ("harness.experiments.report",),
    "harness.dashboard": ("harness.experiments.dashboard",),
    "harness.bench": ("harness.tools.bench",),
    "harness.pipeline": ("harness.experiments.wiring", "harness.layout",
                         "harness.training.model_io"),
}


class _Moved(types.ModuleType):
    def __init__(self, name: str, targets: tuple[str, ...]):
        super().__init__(name, f"Moved to {', '.join(targets)}.")
        self.__targets = targets

    def __getattr__(self, attr: str):
        for target in self.__targets:
            mod = importlib.import_module(target)
            if hasattr(mod, attr):
                return getattr(mod, attr)
        raise AttributeError(f"module {self.__name__!r} (moved to "
                             f"{', '.join(self.__targets)}) has no attribute {attr!r}")

    def __dir__(self):
        return sorted({a for t in self.__targets for a in dir(importlib.import_module(t))})


def _importer_level() -> int:
    """The stack level of the frame that imported the old name (past importlib's frames)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (frame.f_code.co_filename.startswith("<frozen importlib")
                                 or frame.f_code.co_filename == __file__):
        frame, level = frame.f_back, level + 1
    return level


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        targets = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {' and '.join(targets)}; the old path will be "
                      f"removed in {REMOVED_IN} (plugins: import from harness.api)",
                      DeprecationWarning, stacklevel=_importer_level())
        return _Moved(spec.name, targets)

    def exec_module(self, module) -> None:
        pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in MOVED:
            return importlib.machinery.ModuleSpec(name, _Loader())
        return None


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
