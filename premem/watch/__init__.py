"""`premem watch`: score a run while it trains, each checkpoint once it is complete, on a pool kept warm.

    cfg = WatchConfig(runs=["runs/a"], train=DataConfig(path="train.jsonl"), store="scores/", fit="fit.json")
    summary = watch(cfg)        # returns when every run has finished, at --until, after --idle, or on Ctrl-C

- premem.watch.completeness  whether a checkpoint folder is fully written (never score one being written)
- premem.watch.watcher       the loop: Watcher (also run in a thread beside training by premem.callbacks), watch
- premem.watch.progress      what a scored checkpoint says: pre-memorization accuracy, memorized fraction, prediction

WatchConfig is read without importing torch or Ray; the rest loads when first named (PEP 562).
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path

from premem.data import DataConfig
from premem.errors import InputError
from premem.execution import ExecConfig, check_int, check_number
from premem.sampling.backend import SamplingParams

log = logging.getLogger(__name__)


@dataclass
class WatchConfig:
    """What `premem watch` watches, how it scores each checkpoint, and when it stops."""

    runs: list[str] = field(default_factory=list)
    """Run directories to watch (--run, repeated), or globs such as 'runs/*' (runs that appear later are watched too);
    a directory not there yet is waited for."""
    store: str = ""
    """Score store directory to write (created if missing; a restarted watch resumes it, as premem score does)."""
    train: DataConfig = field(default_factory=DataConfig)
    """Training data: every example gets its gold perplexity and k samples per checkpoint."""
    test: DataConfig | None = None
    """Test data: k samples per query per checkpoint (optional: with --fit, test accuracy is predicted instead)."""
    fit: str | None = None
    """A saved fit (premem predict --save-fit) to predict each checkpoint's test accuracy from, with its band."""
    tau: float | None = None
    """Memorization threshold for the metrics logged without --fit (default: the rule premem predict uses; with
    --fit, the fit's tau)."""
    until: int | None = None
    """Stop once every run has a scored checkpoint at or past this step."""
    idle: float | None = 3600.0
    """Stop after this many seconds without a new complete checkpoint (null: wait until every run has finished)."""
    poll: float = 5.0
    """Seconds between looks at the run directories."""
    report: str | None = None
    """HTML report to rewrite after each scored checkpoint (it refreshes itself in the browser while watching)."""
    state_file: str = "trainer_state.json"
    """The file a trainer writes last in each checkpoint-<step> folder: the folder is complete once it is there
    (empty: the weights alone decide)."""
    train_examples: str = "trained"
    """Which training examples to score: trained (those the run's premem_run.json lists, else all), all, or none."""
    base_model: str | None = None
    """Base model for LoRA adapters (default: what adapter_config.json names)."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    """How answers are sampled."""
    template: str = "paper"
    """Prompt template: paper (question + "\\nAnswer:") or chat (the tokenizer's chat template)."""
    count: str = "strict"
    """Which extraction counts a sample correct in n_correct: strict (#### / \\boxed) or flexible."""
    shard_size: int = 64
    """Examples per task; a killed watch loses at most one task per actor."""
    sample: str = "exact"
    """Which training pairs to sample: exact (skip pairs whose pre-memorization accuracy is 0 whatever they sample)
    or all (as premem score; final needs the run's last checkpoint, unknown while it trains)."""
    sample_tau: float | None = None
    """The lowest tau you will analyse with (as premem score; default: the low end of the tau=auto grid, -4)."""
    exec: ExecConfig = field(default_factory=ExecConfig)
    """How the work runs: backend, its options, Ray actors and cluster, progress bar."""

    def validate(self, runs: bool = True) -> None:
        """Refuse every setting that cannot work, before anything is read, written or started (runs=False: all
        but the run directories, for a caller that learns them later)."""
        from premem.files import check_output
        from premem.sampling.job import check_store_path

        if runs:
            self.run_dirs(check=True)
        check_store_path(self.store)
        check_output(self.store, [self.train.path, self.test.path if self.test else None, self.fit], kind="dir",
                     what="store", inside=[run_root(r) for r in self.runs])
        if self.until is not None:
            check_int("until", self.until, 0)
        for name in ("idle", "poll"):
            if getattr(self, name) is not None or name == "poll":
                check_number(name, getattr(self, name), lambda s: s > 0, "a number of seconds > 0")
        if not isinstance(self.state_file, str) or "/" in self.state_file:
            raise InputError(f"state_file: expected a file name (or empty), got {self.state_file!r}")
        if self.tau is not None:
            check_number("tau", self.tau, lambda t: True, "a finite number")
        if self.fit:
            if self.tau is not None:
                raise InputError("tau: not with fit, which predicts at the saved fit's tau")
            from premem.metrics.calibration import load_fit

            load_fit(self.fit)
        if self.report:
            if Path(self.report).suffix.lower() not in (".html", ".htm"):
                raise InputError(f"report: {self.report}: the report is one .html file")
            check_output(self.report, [self.store, self.train.path, self.test.path if self.test else None, self.fit],
                         what="report", inside=[run_root(r) for r in self.runs] + [self.store])
        self.score_config(Path(".")).validate()  # the scoring settings, as premem score names them
        if self.sample == "final":  # which checkpoint is the last is known only once the run has ended
            raise InputError("sample: final skips memorized pairs before a run's last checkpoint, which a watch "
                             "cannot know while the run trains; use exact (the default) or all")
        if not self.train.path:
            raise InputError("train.path: say which training data the runs train on (--train DATA)")

    def run_dirs(self, check: bool = False) -> list[Path]:
        """The run directories now: each plain path (there or not yet), each glob's matching directories."""
        if check and not self.runs:
            raise InputError("runs: say which run to watch (--run RUN_DIR, repeated, or a glob such as 'runs/*')")
        found: list[Path] = []
        for pattern in self.runs:
            if glob.has_magic(pattern):
                found += [Path(p) for p in sorted(glob.glob(pattern)) if Path(p).is_dir()]
                if check and not Path(run_root(pattern)).is_dir():
                    raise InputError(f"runs: {pattern}: {run_root(pattern)} is not a directory")
            else:
                path = Path(pattern)
                if check and path.exists() and not path.is_dir():
                    raise InputError(f"runs: {pattern} is not a directory")
                if check and not path.exists():
                    log.info("watch: %s does not exist yet; waiting for it", pattern)
                found.append(path)
        unique = list(dict.fromkeys(p.resolve() for p in found))
        names: dict[str, Path] = {}
        for path in unique:  # the run's name in the store is its directory's name, as premem score names it
            if path.name in names:
                raise InputError(f"runs: {names[path.name]} and {path} are both run {path.name!r} in the store; "
                                 "watch runs with distinct directory names")
            names[path.name] = path
        return unique

    def score_config(self, run_dir: Path):
        """The premem score settings that score one watched run (every checkpoint: score resumes the rest)."""
        from premem.sampling.job import ScoreConfig

        return ScoreConfig(run=str(run_dir), store=self.store, train=self.train, test=self.test,
                           train_examples=self.train_examples, base_model=self.base_model, sampling=self.sampling,
                           template=self.template, count=self.count, shard_size=self.shard_size, sample=self.sample,
                           sample_tau=self.sample_tau, exec=self.exec)


def run_root(pattern: str) -> str:
    """The directory a glob's matches lie in (the pattern's part before its first wildcard), or the path itself."""
    if not glob.has_magic(pattern):
        return pattern
    parts = Path(pattern).parts
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]]
    return str(Path(*fixed)) if fixed else "."


_LAZY = {"watch": "watcher", "Watcher": "watcher", "WatchSummary": "watcher", "run_state": "completeness",
         "RunState": "completeness", "checkpoint_metrics": "progress"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"premem.watch.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
