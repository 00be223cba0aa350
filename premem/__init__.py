"""premem: pre-memorization data curation for LLM finetuning.

The package is split by stage, data flowing one way (DESIGN.md §2; tests/test_layers.py checks it):
data -> runs/models -> train -> sampling -> metrics -> curate -> report -> recipes. This module is the
public API on top, for scripts and notebooks (the README's "Python API" runs it end to end):

    import premem
    premem.score(premem.ScoreConfig(run="runs/a", train=premem.DataConfig(path="train.jsonl"), store="scores/"))
    pred = premem.predict("scores/")                  # a store directory, a ScoreStore or TrainingCurves
    result = premem.curate(premem.CurateConfig(store="scores/", data="train.jsonl", budget=0.25, out="curated/"))
    premem.report("scores/", "report.html")

Every name loads when first used: `import premem` imports neither torch, Ray nor pandas.

premem.curate, premem.train and premem.report are at once the stage's subpackage and its main
function: `premem.curate(cfg)` runs premem.curate.api.curate, while `premem.curate.strategies`,
`import premem.report.html` and `from premem.curate import CurateConfig` work as for any package.
A subpackage that is called is made callable as it is imported (see _Premem), however it is imported.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types

from premem.version import __version__

# name -> "module:attribute" it is loaded from, on first use
_EXPORTS = {
    # the jobs and their configs
    "score": "premem.sampling.job:score",
    "ScoreConfig": "premem.sampling.job:ScoreConfig",
    "ScoreSummary": "premem.sampling.job:ScoreSummary",
    "SamplingParams": "premem.sampling.backend:SamplingParams",
    "TrainConfig": "premem.train.config:TrainConfig",
    "SweepConfig": "premem.train.config:SweepConfig",
    "sweep": "premem.train.api:sweep",
    "predict": "premem.metrics.predict:predict",
    "Prediction": "premem.metrics.predict:Prediction",
    "fit_table": "premem.metrics.predict:fit_table",
    "calibrate": "premem.metrics.calibration:calibrate",
    "Fit": "premem.metrics.calibration:Fit",
    "save_fit": "premem.metrics.calibration:save_fit",
    "load_fit": "premem.metrics.calibration:load_fit",
    "predict_from_fit": "premem.metrics.calibration:predict_from_fit",
    "CurateConfig": "premem.curate.api:CurateConfig",
    "CurateResult": "premem.curate.api:CurateResult",
    "WatchConfig": "premem.watch:WatchConfig",
    "WatchSummary": "premem.watch.watcher:WatchSummary",
    "PrememCallback": "premem.callbacks:PrememCallback",
    "ExecConfig": "premem.execution:ExecConfig",
    "BackendOptions": "premem.execution:BackendOptions",
    # data
    "DataConfig": "premem.data.examples:DataConfig",
    "Example": "premem.data.rows:Example",
    "ExampleSet": "premem.data.examples:ExampleSet",
    "load_examples": "premem.data.examples:load_examples",
    "load_example_set": "premem.data.examples:load_example_set",
    "get_grader": "premem.data.grading:get_grader",
    "get_template": "premem.data.templates:get_template",
    # scores and what is computed from them
    "ScoreStore": "premem.store:ScoreStore",
    "TrainingCurves": "premem.metrics.premem:TrainingCurves",
    "PAPER_TAU": "premem.metrics.premem:PAPER_TAU",
    "InputError": "premem.errors:InputError",
}

# subpackages that are also their stage's main function: name -> "module:function" a call runs
_CALLABLE_PACKAGES = {
    "train": "premem.train.api:train",
    "curate": "premem.curate.api:curate",
    "report": "premem.report.html:build_report",
    "watch": "premem.watch.watcher:watch",
}

__all__ = sorted(["__version__", *_EXPORTS, *_CALLABLE_PACKAGES])


def _load(target: str):
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def __getattr__(name: str):
    if name in _CALLABLE_PACKAGES:  # importing it sets the attribute (through _Premem.__setattr__)
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        value = globals()[name] = _load(_EXPORTS[name])
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _CallablePackage(types.ModuleType):
    """A subpackage that is also a function: calling it calls _CALLABLE_PACKAGES[its name]."""

    def __call__(self, *args, **kwargs):
        return self._function()(*args, **kwargs)

    def _function(self):
        return _load(_CALLABLE_PACKAGES[self.__name__.rpartition(".")[2]])

    @property
    def __signature__(self) -> inspect.Signature:  # inspect.signature(premem.curate): the function's
        return inspect.signature(self._function())

    def __reduce__(self):  # pickled by name, as a plain module would be (Ray, cloudpickle)
        return importlib.import_module, (self.__name__,)


class _Premem(types.ModuleType):
    """premem itself: makes a subpackage named in _CALLABLE_PACKAGES callable when the import system
    sets it as an attribute, which it does on the first import of that subpackage or anything in it."""

    def __setattr__(self, name: str, value) -> None:
        if name in _CALLABLE_PACKAGES and type(value) is types.ModuleType and value.__name__ == f"{__name__}.{name}":
            value.__class__ = _CallablePackage
        super().__setattr__(name, value)

    def __reduce__(self):
        return importlib.import_module, (self.__name__,)


sys.modules[__name__].__class__ = _Premem
