"""Selection strategies: which training examples a curated subset keeps, each behind one registry name.

A strategy is a small dataclass (its fields are its parameters, set as KEY=VALUE on the
command line) with a `select(inp, budget, seed)` method: given a `CurationInput` (the
store's per-example scores for the data's examples, and the data) it ranks every scored
example, takes `budget` of them and returns a `Selection`. Ties are broken in a seeded
random order, never by id, so that a tie never favours the first rows of the file; the same
seed gives the same selection.

    strategy = get_strategy("cartography", {"region": "hard"})
    selection = strategy.select(inp, budget=100, seed=0)

IFD (instruction-following difficulty, Li et al. 2023) is not here on purpose: see UNAVAILABLE.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import pandas as pd

from premem.data import ExampleSet
from premem.errors import InputError
from premem.metrics.premem import TrainingCurves

# -- what strategies see and return ---------------------------------------------------------


@dataclass
class CurationInput:
    """The store's train scores for the data's examples, the data itself, and the runs chosen.

    `train` holds the store's train_scores rows (every run; their ids already checked to be
    the data's), `runs_table` its runs.parquet. The pool of candidates, `ids`, is the examples
    the chosen runs scored (each run restricted to the examples it trained on).
    """

    data: ExampleSet
    train: pd.DataFrame
    runs_table: pd.DataFrame
    runs: list[str]
    tau: float | None = None  # memorization threshold, for strategies that use it
    _curves: dict = field(default_factory=dict, repr=False)

    def curves(self, runs: list[str] | None = None) -> TrainingCurves:
        """Per-example curves of these runs (default: the chosen ones), restricted to what each trained on."""
        key = tuple(self.runs if runs is None else runs)
        if key not in self._curves:
            train = self.train[self.train["run"].isin(key)]
            runs_table = self.runs_table[self.runs_table["run"].isin(key)]
            self._curves[key] = TrainingCurves.from_tables(train, runs_table)
        return self._curves[key]

    @property
    def frame(self) -> pd.DataFrame:
        """run, step, example_id, acc, loglog, log_ppl of the chosen runs, sorted by (run, example_id, step)."""
        return self.curves().frame

    @property
    def ids(self) -> np.ndarray:
        """The candidates: example ids the chosen runs scored, ascending."""
        return np.unique(self.frame["example_id"].to_numpy())

    def in_data_order(self, ids) -> list[int]:
        """ids sorted by their row in the data file."""
        position = {ex.example_id: i for i, ex in enumerate(self.data.examples)}
        return sorted((int(i) for i in ids), key=position.__getitem__)


@dataclass
class Selection:
    """What a strategy chose.

    scores: one row per candidate in rank order: example_id, score, rank (1 = chosen first),
    selected (the example is in the output), copies (its rows in the output), and any
    strategy-specific columns. rows: example ids in output order (data order; upsampling
    appends its extra copies), repeats allowed.
    """

    scores: pd.DataFrame
    rows: list[int]
    score: str  # what the score column means
    info: dict[str, Any] = field(default_factory=dict)


class Strategy(Protocol):
    name: ClassVar[str]
    uses_tau: bool  # whether tau decides memorization (premem_low: unless its factor does)

    def select(self, inp: CurationInput, budget: int, seed: int) -> Selection: ...


STRATEGIES: dict[str, type] = {}

UNAVAILABLE = {
    "ifd": "IFD (instruction-following difficulty, Li et al. 2023) is the loss of the response given the "
    "instruction divided by its loss without the instruction; a score store holds only the first "
    "(train_scores.perplexity, the gold target after the prompt), so IFD cannot be computed from a store",
}


def register(cls):
    STRATEGIES[cls.name] = cls
    return cls


def get_strategy(name: str, params: dict[str, Any] | None = None) -> Strategy:
    """The strategy registered as `name`, with its parameters set from `params` (checked)."""
    from premem.config import from_dict

    known = ", ".join(STRATEGIES)
    if name in UNAVAILABLE:
        raise InputError(f"strategy {name!r}: not available: {UNAVAILABLE[name]}; known: {known}")
    if name not in STRATEGIES:
        raise InputError(f"strategy {name!r}: unknown strategy; known: {known}")
    cls = STRATEGIES[name]
    if params and not dataclasses.fields(cls):
        raise InputError(f"strategy {name}: takes no parameters, got {', '.join(map(str, params))}")
    return from_dict(cls, dict(params or {}), f"strategy {name} parameters")


def describe(name: str) -> str:
    """A strategy's docstring as one paragraph (for --help and the README)."""
    return " ".join((STRATEGIES[name].__doc__ or "").split())


def params_of(strategy) -> dict[str, Any]:
    return dataclasses.asdict(strategy)


# -- helpers --------------------------------------------------------------------------------


def ranked(ids, key, seed: int, descending: bool = False) -> np.ndarray:
    """ids ordered by key (ascending unless descending), ties in a seeded random order, NaN last."""
    ids, key = np.asarray(ids, dtype=np.int64), np.asarray(key, dtype=float)
    by_id = np.argsort(ids, kind="stable")  # the tie order depends on the ids, not on their order here
    ids, key = ids[by_id], key[by_id]
    tie = np.random.default_rng(seed).permutation(len(ids))
    missing = np.isnan(key)
    value = np.where(missing, 0.0, -key if descending else key)
    return ids[np.lexsort((tie, value, missing))]


def per_example(frame: pd.DataFrame, column: str, ids: np.ndarray) -> np.ndarray:
    """Mean of `column` per example over the frame's rows (one per run), aligned to ids; NaN where none."""
    return frame.groupby("example_id")[column].mean().reindex(ids).to_numpy(dtype=float)


def at_checkpoint(frame: pd.DataFrame, which: str) -> pd.DataFrame:
    """Each run's rows at its first or last checkpoint."""
    steps = frame.groupby("run")["step"].transform("min" if which == "first" else "max")
    return frame[frame["step"] == steps]


def top(inp: CurationInput, order: np.ndarray, budget: int, score: np.ndarray, ids: np.ndarray, meaning: str,
        extra: dict[str, np.ndarray] | None = None, info: dict | None = None) -> Selection:
    """The first `budget` of `order`, written in data order; score/extra are aligned to ids."""
    table = pd.DataFrame({"example_id": ids, "score": score, **(extra or {})}).set_index("example_id")
    scores = table.reindex(order).reset_index()
    scores.insert(2, "rank", np.arange(1, len(order) + 1))
    chosen = scores["rank"] <= budget
    scores.insert(3, "selected", chosen.to_numpy())
    scores.insert(4, "copies", chosen.to_numpy(dtype=np.int64))
    return Selection(scores, inp.in_data_order(order[:budget]), meaning, info or {})


def _one_of(value: str, allowed: tuple[str, ...], where: str) -> None:
    if value not in allowed:
        raise InputError(f"{where}: expected one of {', '.join(allowed)}, got {value!r}")


# -- the strategies -------------------------------------------------------------------------


@register
@dataclass
class PremLow:
    """Examples the model could not solve before it memorized them (Kang et al. 2024, Algorithm 1).
    Score: pre-memorization accuracy at the last checkpoint of each chosen run that trained on
    the example, averaged over those runs (tau sets when a trace counts as memorized). Examples
    below `threshold` (default 0.75, the paper's t) come first, lowest first. mode=select takes
    the budget from that low region, filling with the next-lowest examples when the region is
    smaller; mode=upsample keeps every example and adds `budget` extra copies of low-region
    examples (cycling through them, lowest first), the paper's recipe of training on more data
    like the examples with low pre-memorization accuracy."""

    name: ClassVar[str] = "premem_low"
    threshold: float = 0.75
    """Pre-memorization accuracy below which an example is in the low region."""
    mode: str = "select"
    """select (a subset of `budget` examples) or upsample (all examples plus `budget` extra copies)."""
    factor: float | None = None
    """None: memorized when log(log(ppl)) < tau. A number: memorized once an example's log(ppl) falls below factor
    times its own log(ppl) at its run's first checkpoint (the relative detector, premem predict --detector)."""

    @property
    def uses_tau(self) -> bool:
        """tau decides memorization unless the relative detector does (factor)."""
        return self.factor is None

    def __post_init__(self):
        _one_of(self.mode, ("select", "upsample"), "strategy premem_low mode")
        if not 0 <= self.threshold <= 1:
            raise InputError(f"strategy premem_low threshold: expected a number in [0, 1], got {self.threshold!r}")
        if self.factor is not None and not 0 < self.factor < 1:
            raise InputError(f"strategy premem_low factor: expected a number in (0, 1), got {self.factor!r}")

    def select(self, inp: CurationInput, budget: int, seed: int) -> Selection:
        from premem.curate.select import example_scores

        if inp.tau is None and self.factor is None:
            raise InputError("strategy premem_low: needs tau, the memorization threshold")
        s = example_scores(inp.curves(), inp.tau, self.factor).set_index("example_id").reindex(inp.ids)
        ids, premem = inp.ids, s["premem"].to_numpy(dtype=float)
        order = ranked(ids, premem, seed)
        low = premem < self.threshold
        n_low = int(low.sum())
        extra = {"train_acc": s["train_acc"].to_numpy(dtype=float), "memorized": s["memorized"].to_numpy(dtype=float)}
        rule = f"tau={inp.tau:g}" if self.factor is None else f"relative detector, factor {self.factor:g}"
        meaning = f"pre-memorization accuracy (last checkpoint, mean over runs, {rule})"
        info = {"n_low": n_low, "threshold": self.threshold}
        if self.mode == "select":
            info["n_filled_above_threshold"] = max(0, budget - n_low)
            return top(inp, order, budget, premem, ids, meaning, extra, info)
        sel = top(inp, order, len(order), premem, ids, meaning, extra, info)
        region = order[:n_low] if n_low else order  # no low example: the lowest overall, still in rank order
        copies = [int(region[i % len(region)]) for i in range(budget)]
        sel.rows = sel.rows + copies
        counts = pd.Series(copies).value_counts()
        sel.scores["copies"] += counts.reindex(sel.scores["example_id"]).fillna(0).to_numpy(dtype=np.int64)
        info.update(n_extra_rows=budget, n_upsampled=int(len(counts)))
        return sel


@register
@dataclass
class Random:
    """An i.i.d. sample of the budget, drawn with the seed: the baseline every other strategy has
    to beat (the paper compares curation against i.i.d. scaling of the data)."""

    name: ClassVar[str] = "random"
    uses_tau: ClassVar[bool] = False

    def select(self, inp: CurationInput, budget: int, seed: int) -> Selection:
        ids = inp.ids
        key = np.random.default_rng(seed).random(len(ids))
        return top(inp, ranked(ids, key, seed), budget, key, ids, "random key (uniform, seeded)")


@register
@dataclass
class Loss:
    """Highest loss first: the gold trace's perplexity at the last checkpoint of each chosen run
    that trained on the example, averaged over those runs. The examples the finetuned model still
    finds least likely, the classic hard-example heuristic; it does not tell an example the model
    cannot solve from one it solves its own way while its trace stays unlikely."""

    name: ClassVar[str] = "loss"
    uses_tau: ClassVar[bool] = False

    def select(self, inp: CurationInput, budget: int, seed: int) -> Selection:
        final = at_checkpoint(inp.frame, "last")
        ids = inp.ids
        ppl = per_example(final.assign(ppl=np.exp(final["log_ppl"])), "ppl", ids)
        return top(inp, ranked(ids, ppl, seed, descending=True), budget, ppl, ids,
                   "gold perplexity at the last checkpoint (mean over runs)")


@register
@dataclass
class Difficulty:
    """Lowest accuracy of the base model first: the fraction of correct samples at the first scored
    checkpoint of each chosen run (step 0 when the base model was scored), averaged over runs, or
    at the first checkpoint of `base_run`, a run in the store that scored the base model. A
    difficulty heuristic that looks at the model before finetuning only; examples `base_run`
    did not score come last."""

    name: ClassVar[str] = "difficulty"
    uses_tau: ClassVar[bool] = False
    base_run: str | None = None
    """A run of the store whose first checkpoint is the base model (default: each chosen run's first checkpoint)."""

    def select(self, inp: CurationInput, budget: int, seed: int) -> Selection:
        if self.base_run is not None:
            known = list(inp.runs_table["run"])
            if self.base_run not in known:
                raise InputError(
                    f"strategy difficulty base_run: run {self.base_run!r} is not in the store's runs.parquet; "
                    f"runs: {', '.join(known)}"
                )
            frame = inp.curves([self.base_run]).frame
        else:
            frame = inp.frame
        ids = inp.ids
        acc = per_example(at_checkpoint(frame, "first"), "acc", ids)
        return top(inp, ranked(ids, acc, seed), budget, acc, ids,
                   f"accuracy at the first checkpoint of {self.base_run or 'each run'} (mean over runs)",
                   info={"base_run": self.base_run})


@register
@dataclass
class Cartography:
    """Dataset cartography (Swayamdipta et al. 2020) on the gold traces: per example and run,
    confidence = mean over checkpoints of the trace's per-token probability (1/perplexity),
    variability = its standard deviation over checkpoints; both averaged over the chosen runs
    with at least two checkpoints. region=ambiguous (default) takes the highest variability,
    the examples the paper found most useful for generalization; region=hard the lowest
    confidence; region=easy the highest."""

    name: ClassVar[str] = "cartography"
    uses_tau: ClassVar[bool] = False
    region: str = "ambiguous"
    """ambiguous (highest variability), hard (lowest confidence) or easy (highest confidence)."""

    def __post_init__(self):
        _one_of(self.region, ("ambiguous", "hard", "easy"), "strategy cartography region")

    def select(self, inp: CurationInput, budget: int, seed: int) -> Selection:
        f = inp.frame.assign(p=np.exp(-inp.frame["log_ppl"]))
        n_steps = f.groupby("run")["step"].nunique()
        used = sorted(n_steps.index[n_steps >= 2])
        if not used:
            raise InputError(
                f"strategy cartography: needs runs with at least 2 checkpoints; the chosen runs have one each "
                f"({', '.join(inp.runs)})"
            )
        stats = (f[f["run"].isin(used)].groupby(["run", "example_id"])["p"]
                 .agg(confidence="mean", variability="std", n="size"))
        stats["variability"] = stats["variability"] * np.sqrt((stats["n"] - 1) / stats["n"])  # population std, as the paper
        per_ex = stats.groupby("example_id")[["confidence", "variability"]].mean().reindex(inp.ids)
        conf, var = per_ex["confidence"].to_numpy(dtype=float), per_ex["variability"].to_numpy(dtype=float)
        key, descending = {"ambiguous": (var, True), "hard": (conf, False), "easy": (conf, True)}[self.region]
        meaning = {"ambiguous": "variability", "hard": "confidence", "easy": "confidence"}[self.region]
        return top(inp, ranked(inp.ids, key, seed, descending), budget, key, inp.ids,
                   f"{meaning} of the gold trace's per-token probability over checkpoints",
                   {"confidence": conf, "variability": var},
                   {"runs_used": used, "runs_skipped": sorted(set(inp.runs) - set(used))})


@register
@dataclass
class S2L:
    """SmallToLarge (Yang et al. 2024): cluster the examples' loss trajectories, the gold trace's
    log-perplexity at every checkpoint of the chosen runs (runs that did not score every candidate
    are left out), with k-means (k clusters, seeded), then sample evenly across clusters: smallest
    cluster first, one example of each cluster in turn, so the subset covers every kind of
    learning behaviour instead of the most common one."""

    name: ClassVar[str] = "s2l"
    uses_tau: ClassVar[bool] = False
    k: int = 10
    """Number of clusters."""

    def __post_init__(self):
        if self.k < 1:
            raise InputError(f"strategy s2l k: expected a positive number of clusters, got {self.k!r}")

    def select(self, inp: CurationInput, budget: int, seed: int) -> Selection:
        from sklearn.cluster import KMeans

        ids = inp.ids
        traj = inp.frame.pivot_table(index="example_id", columns=["run", "step"], values="log_ppl").reindex(ids)
        complete = traj.notna().all(axis=0)
        runs_complete = complete.groupby(level="run").all()
        used = sorted(runs_complete.index[runs_complete])
        if not used:
            raise InputError(
                "strategy s2l: no chosen run scored every candidate at every checkpoint; "
                f"choose runs that trained on all examples with --run (chosen: {', '.join(inp.runs)})"
            )
        x = traj.loc[:, traj.columns.get_level_values("run").isin(used)].to_numpy(dtype=float)
        if self.k > len(ids):
            raise InputError(f"strategy s2l k: {self.k} clusters for {len(ids)} examples; choose k <= {len(ids)}")
        labels = KMeans(n_clusters=self.k, n_init=10, random_state=seed).fit_predict(x)
        # clusters renumbered smallest first (ties by label); round-robin across them in that order
        sizes = np.bincount(labels, minlength=self.k)
        by_size = np.lexsort((np.arange(self.k), sizes))
        cluster = np.empty(self.k, dtype=np.int64)
        cluster[by_size] = np.arange(self.k)
        c = cluster[labels]
        turn = np.empty(len(ids), dtype=np.int64)
        rng = np.random.default_rng(seed)
        for j in range(self.k):
            members = np.flatnonzero(c == j)
            turn[members[rng.permutation(len(members))]] = np.arange(len(members))
        order = ids[np.lexsort((c, turn))]
        info = {"k": self.k, "cluster_sizes": [int(n) for n in np.sort(sizes)], "runs_used": used,
                "runs_skipped": sorted(set(inp.runs) - set(used)), "features": int(x.shape[1])}
        sel = top(inp, order, budget, c.astype(float), ids, "cluster (0 = smallest) of the log-perplexity trajectory",
                  {"cluster_size": sizes[labels].astype(np.int64)}, info)
        picked = sel.scores.loc[sel.scores["selected"], "score"].astype(int)
        info["selected_per_cluster"] = [int(n) for n in np.bincount(picked, minlength=self.k)]
        return sel
