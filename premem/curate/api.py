"""`curate`: a score store and the data it scored in, a curated subset and its manifest out.

    from premem.curate import CurateConfig, curate
    result = curate(CurateConfig(store="../shared/data/paper_runs/gsm8k", data="../shared/data/gsm8k/train.jsonl",
                                 strategy="premem_low", budget=0.25, out="curated/"))
    result.selection.scores      # example_id, score, rank, selected, copies, ...

Everything is checked before anything is written: the strategy and its parameters, the
budget, the runs, and that the store was scored on this data (the fingerprint recorded in
its datasets table when it has one, and in any case that every example id it scored is one of
the data's). OUT then receives, all at once (premem.curate.export):

    <data's name>                    the subset in the input's format (upsampling repeats rows)
    <stem>.prompt_completion.jsonl   the same rows as TRL prompt/completion, paper template
    manifest.json                    strategy, parameters, budget, seed, tau, runs, input hashes,
                                     and every candidate's score, rank and selection
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from premem.curate import export
from premem.curate.strategies import CurationInput, Selection, Strategy, describe, get_strategy, params_of
from premem.data import DataConfig, ExampleSet, load_example_set
from premem.errors import InputError
from premem.files import sha256_file, staged_dir
from premem.metrics.premem import PAPER_TAU, TrainingCurves
from premem.store import ScoreStore
from premem.version import __version__

log = logging.getLogger(__name__)


@dataclass
class CurateConfig:
    """What to curate, from which scores, how much, and where to."""

    store: str = ""
    """Score store directory (premem score's, or results dropped in like shared/data/paper_runs/gsm8k)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The training data the store scored, read as when it was scored (same format and fields); a path will do."""
    strategy: str = "premem_low"
    """Selection strategy: premem_low, random, loss, difficulty, cartography, s2l."""
    budget: float | int | str = 0.25
    """Examples to select: a count (an integer, 1 to the number of candidates) or a fraction in (0, 1] (0.25)."""
    out: str = ""
    """Output directory; empty: select only, write nothing."""
    runs: list[str] = field(default_factory=list)
    """Runs of the store whose scores to use (default: all)."""
    tau: float | str = PAPER_TAU
    """Memorization threshold on log(log(ppl)) for premem_low, or auto (chosen as premem predict does, on all runs)."""
    seed: int = 0
    """Seed for sampling and tie-breaking: the same seed gives the same selection."""
    params: dict[str, Any] = field(default_factory=dict)
    """The strategy's parameters, e.g. {mode: upsample} or {region: hard}."""
    overwrite: bool = False
    """Replace a non-empty OUT that is not an earlier curate output."""


@dataclass
class CurateResult:
    selection: Selection
    manifest: dict[str, Any]
    out: Path | None = None  # None when nothing was written (cfg.out empty)
    subset: Path | None = None
    prompt_completion: Path | None = None


def parse_budget(budget: Any) -> int | float:
    """An int count or a float fraction; "100" is a count, "0.25" and "1.0" fractions."""
    where = f"budget {budget!r}"
    value = budget
    if isinstance(budget, str):
        try:
            value = int(budget)
        except ValueError:
            try:
                value = float(budget)
            except ValueError:
                raise InputError(f"{where}: expected a count (100) or a fraction (0.25)") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: expected a count (100) or a fraction (0.25)")
    if isinstance(value, int):
        if value <= 0:
            raise InputError(f"{where}: expected a positive count of examples, or a fraction in (0, 1]")
        return value
    if not (math.isfinite(value) and 0 < value <= 1):
        raise InputError(f"{where}: a fraction must be in (0, 1]; a count is an integer")
    return value


def resolve_budget(budget: int | float, n: int, data_path: str, n_data: int) -> int:
    """The budget as a count of the n candidates (a fraction of them, at least one)."""
    if isinstance(budget, float):
        return max(1, round(budget * n))
    if budget > n:
        of = f"the {n} examples of {data_path}" + (f" that the chosen runs scored (of {n_data})" if n < n_data else "")
        raise InputError(f"budget {budget}: more than {of}")
    return budget


def curate(cfg: CurateConfig) -> CurateResult:
    """Check everything, select with the strategy, and (when cfg.out is set) write OUT."""
    if isinstance(cfg.data, (str, Path)):  # a path will do; the caller's config stays as it was
        cfg = dataclasses.replace(cfg, data=DataConfig(path=str(cfg.data)))
    strategy, budget, tau = _check(cfg)
    store = ScoreStore(cfg.store)
    if cfg.out:
        export.check_out(cfg.out, cfg.overwrite, [cfg.data.path, cfg.store])
    data = load_example_set(cfg.data)
    train, runs_table, runs = _read_store(store, data, cfg.runs)
    if strategy.uses_tau and tau == "auto":
        tau = _auto_tau(store, train, runs_table)
    inp = CurationInput(data, train, runs_table, runs, tau if strategy.uses_tau else None)
    if strategy.uses_tau:  # unsampled pairs (premem score sample=exact|final) are exact only from their sample_tau
        inp.curves().check_tau(tau)
    n = len(inp.ids)
    if n < len(data.examples):
        log.warning("%d of the %d examples of %s have no scores from the chosen runs; they are not candidates",
                    len(data.examples) - n, len(data.examples), data.path)
    k = resolve_budget(budget, n, data.path, len(data.examples))
    selection = strategy.select(inp, k, cfg.seed)
    manifest = _manifest(cfg, strategy, inp, selection, budget, k, store)
    result = CurateResult(selection, manifest)
    if cfg.out:
        _write(cfg, data, selection, manifest, result)
    return result


def _check(cfg: CurateConfig) -> tuple[Strategy, int | float, float | str]:
    if not cfg.store:
        raise InputError("store: say which score store to curate from (--store DIR)")
    if not cfg.data.path:
        raise InputError("data: say which data the store scored (--data PATH)")
    strategy = get_strategy(cfg.strategy, cfg.params)
    budget = parse_budget(cfg.budget)
    tau = cfg.tau
    if tau != "auto":
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau):
            raise InputError(f"tau: expected a number or auto, got {tau!r}")
        tau = float(tau)
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise InputError(f"seed: expected a non-negative integer, got {cfg.seed!r}")
    return strategy, budget, tau


def _read_store(store: ScoreStore, data: ExampleSet, chosen: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The store's train scores and runs, checked against the data and the chosen runs."""
    if store.has("datasets"):
        recorded = store.read("datasets").set_index("split")
        if "train" in recorded.index and recorded.loc["train", "fingerprint"] != data.fingerprint:
            row = recorded.loc["train"]
            raise InputError(
                f"{store.path('datasets')}: the store's train split was scored on other data ({row['path']}, "
                f"{row['n_examples']} examples, fingerprint {row['fingerprint'][:12]}…) than {data.path} "
                f"({len(data.examples)} examples, fingerprint {data.fingerprint[:12]}…); give the data it was scored on, "
                "read the same way (format, fields)"
            )
    train = store.read("train_scores")
    ids = {ex.example_id for ex in data.examples}
    scored = np.unique(train["example_id"].to_numpy())
    foreign = scored[~np.isin(scored, np.fromiter(ids, dtype=np.int64, count=len(ids)))]
    if len(foreign):
        raise InputError(
            f"{store.path('train_scores')}: example_id {int(foreign[0])} is not in {data.path} "
            f"({len(ids)} examples, ids {min(ids)}..{max(ids)}; {len(foreign)} scored ids are not); "
            "the store was scored on other data"
        )
    runs_table = store.runs()
    known = list(runs_table["run"])
    for run in chosen:
        if run not in known:
            raise InputError(f"run {run!r}: not in {store.path('runs')}; runs: {', '.join(map(str, known))}")
    runs = list(dict.fromkeys(chosen)) or known
    scored_runs = set(train["run"])
    unscored = [r for r in runs if r not in scored_runs]
    if unscored:
        raise InputError(f"run {unscored[0]!r}: has no rows in {store.path('train_scores')}")
    return train, runs_table, runs


def _auto_tau(store: ScoreStore, train: pd.DataFrame, runs_table: pd.DataFrame) -> float:
    from premem.metrics.predict import predict  # sklearn: imported only when tau=auto needs it

    if not store.has("test_scores"):
        raise InputError(
            f"tau auto: needs test scores to calibrate on, and {store.path('test_scores')} is missing; give tau a number"
        )
    tau = predict(TrainingCurves.from_tables(train, runs_table, store.read("test_scores")), "auto").tau
    log.info("tau = %g (auto, chosen on all %d runs of the store)", tau, len(runs_table))
    return float(tau)


def _manifest(cfg: CurateConfig, strategy: Strategy, inp: CurationInput, sel: Selection, budget: int | float,
              k: int, store: ScoreStore) -> dict[str, Any]:
    tables = ["runs", "train_scores", "datasets"] + (["test_scores"] if strategy.uses_tau and cfg.tau == "auto" else [])
    store_files = {}
    for table in tables:
        files = [store.path(table)] if store.path(table).is_file() else []
        files += [store.part_path(table, p) for p in store.parts(table)]
        store_files.update({str(f.relative_to(store.root)): sha256_file(f) for f in files})
    scores = sel.scores
    written = np.repeat(scores["score"].to_numpy(dtype=float), scores["copies"].to_numpy())
    return {
        "kind": export.KIND,
        "premem_version": __version__,
        "strategy": {"name": strategy.name, "params": params_of(strategy), "description": describe(strategy.name),
                     "score": sel.score},
        "budget": {"requested": budget, "n": k, "candidates": len(inp.ids), "data_examples": len(inp.data.examples),
                   "rows_written": len(sel.rows)},
        "seed": cfg.seed,
        "tau": inp.tau,
        "tau_requested": cfg.tau if strategy.uses_tau else None,
        "runs": list(inp.runs),
        "data": {"path": str(cfg.data.path), "split": cfg.data.split, "format": inp.data.format, "grader": inp.data.grader,
                 "fingerprint": inp.data.fingerprint, "sha256": export.sha256_tree(cfg.data.path)},
        "store": {"path": str(cfg.store), "sha256": store_files},
        "summary": {"score_mean_rows": _num(np.nanmean(written) if np.isfinite(written).any() else np.nan),
                    "score_mean_all": _num(scores["score"].mean()), "n_selected": int(scores["selected"].sum())},
        "info": sel.info,
        "files": {},
        "rows": [int(i) for i in sel.rows],
        "examples": [{k: _num(v) for k, v in row.items()} for row in scores.to_dict("records")],
    }


def _num(v: Any) -> Any:
    """JSON-ready: numpy scalars as Python numbers, floats rounded to 6 digits, NaN as null."""
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(v) else round(float(v), 6)
    return v


def _write(cfg: CurateConfig, data: ExampleSet, sel: Selection, manifest: dict, result: CurateResult) -> None:
    out = Path(cfg.out)
    position = {ex.example_id: i for i, ex in enumerate(data.examples)}
    positions = [position[i] for i in sel.rows]
    subset, pc = export.subset_name(cfg.data.path), export.prompt_completion_name(cfg.data.path)
    manifest["files"] = {"subset": subset, "subset_format": export.source_kind(cfg.data.path),
                         "prompt_completion": pc, "template": "paper"}
    with staged_dir(out) as tmp:
        export.write_subset_like(cfg.data, positions, tmp / subset)
        export.write_prompt_completion([data.examples[p] for p in positions], tmp / pc)
        (tmp / export.MANIFEST).write_text(dumps_manifest(manifest), encoding="utf-8")
    result.out, result.subset, result.prompt_completion = out, out / subset, out / pc


def dumps_manifest(manifest: dict) -> str:
    """manifest.json's text: indented, except rows (one line) and examples (one line each)."""
    head = {k: v for k, v in manifest.items() if k not in ("rows", "examples")}
    text = json.dumps(head, indent=1, ensure_ascii=False)[: -len("\n}")]
    examples = ",\n".join("  " + json.dumps(e, ensure_ascii=False) for e in manifest["examples"])
    return f'{text},\n "rows": {json.dumps(manifest["rows"])},\n "examples": [\n{examples}\n ]\n}}\n'


def summary(result: CurateResult) -> str:
    """What `premem curate` prints: the selection, its scores, the files written."""
    m = result.manifest
    b, s = m["budget"], m["summary"]
    tau = f", tau {m['tau']:g}" if m["tau"] is not None else ""
    mean = {k: "-" if v is None else f"{v:.3f}" for k, v in s.items()}
    return (f"{m['strategy']['name']}: {b['n']} of {b['candidates']} examples (budget {b['requested']}; "
            f"{b['rows_written']} rows written; seed {m['seed']}{tau}; runs: {', '.join(m['runs'])})\n"
            f"score = {m['strategy']['score']}: mean {mean['score_mean_rows']} over the rows written, "
            f"{mean['score_mean_all']} over all candidates\n"
            f"-> {result.subset}\n-> {result.prompt_completion}\n-> {result.out / 'manifest.json'}")
