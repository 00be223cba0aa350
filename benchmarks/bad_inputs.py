"""A battery of bad inputs across every verb, run as a user would: `premem ...` in a subprocess.

Each case is a command line on a small workspace (a tiny benchmark, a tiny model with two
checkpoints, a sharded and a LoRA run, a score store, preference pairs, a probe set) and what a
mature tool should do with it: refuse it (exit 2, one line `premem: error: ...` naming the
file, row or field, nothing written or changed) or give the right result. Every run is sorted
into one of:

    clear error    exit 2, one line on stderr (after premem's own log lines, if any), no traceback,
                   the workspace unchanged
    right result   exit 0 and the output checks out
    traceback      a Python traceback, or an exit code other than 0 and 2
    silent wrong   exit 0 where a refusal was due, a wrong result, or a refusal of good input
    written        refused, but something in the workspace was written or changed
    hang           still running after --timeout seconds (killed)

The target is zero in the last four. It exits 1 if any case lands there.

    python benchmarks/bad_inputs.py                 # all cases (about 5-10 minutes on 2 cores)
    python benchmarks/bad_inputs.py -k score -v     # cases whose name has "score", with their output
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
PREMEM_LOG = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING) premem[.:]")
OUTCOMES = ("clear error", "right result", "traceback", "silent wrong", "written", "hang")


@dataclass
class Case:
    name: str
    argv: list[str]
    refuse: bool = True  # a refusal is due (else: a right result)
    says: list[str] = field(default_factory=list)  # the error line (or stdout+stderr for a result) must hold these
    check: Callable[[Path, str], bool] | None = None  # for a result: (workspace, stdout) -> right?
    setup: Callable[[Path], None] | None = None  # prepares the bad input inside the workspace
    timeout: float | None = None


# -- the workspace ----------------------------------------------------------------------------


def build_workspace(ws: Path) -> None:
    """Data, models, runs and a store for the cases, made offline with premem's own pieces."""
    import numpy as np
    import pandas as pd

    from premem.data import arith
    from premem.logs import quiet_libraries
    from premem.store import ScoreStore

    quiet_libraries(False)  # transformers' loading bars are not the battery's business
    from premem.train.tiny import build_tiny_model

    cfg = arith.ArithConfig(n_train=24, n_test=8, seed=0)
    train, test = arith.generate(cfg)
    arith.write_jsonl(train, ws / "train.jsonl")
    arith.write_jsonl(test, ws / "test.jsonl")
    arith.write_jsonl(arith.preference_pairs(cfg, 12, seed=0), ws / "pairs.jsonl", keys=("prompt", "chosen", "rejected"))

    texts = [r["question"] + "\nAnswer: " + r["answer"] + "\nDone." for r in train + test]
    base = build_tiny_model(texts, ws / "base", hidden_size=32, layers=1, max_position_embeddings=256, seed=0)
    for step in (1, 2):  # a run of two full checkpoints (the same weights: only the errors matter here)
        shutil.copytree(base, ws / "run" / f"checkpoint-{step}")

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    model.save_pretrained(ws / "sharded" / "checkpoint-1", max_shard_size="40KB")  # Trainer-style sharded safetensors
    shutil.copy(base / "tokenizer.json", ws / "sharded" / "checkpoint-1")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (base / name).exists():
            shutil.copy(base / name, ws / "sharded" / "checkpoint-1")

    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(ws / "lora" / "checkpoint-1")

    rng = np.random.default_rng(0)
    rows_train, rows_test = [], []
    for r in range(4):
        for step in (10, 20, 30):
            for i in range(10):
                rows_train.append((f"run{r}", step, i, 5, int(rng.binomial(5, 0.2 + 0.15 * r)), 1.05 + rng.random()))
                rows_test.append((f"run{r}", step, i, 5, int(rng.binomial(5, 0.2 + 0.15 * r))))
    store = ScoreStore(ws / "store", create=True)
    store.write("runs", pd.DataFrame({"run": [f"run{r}" for r in range(4)]}))
    store.write("train_scores", pd.DataFrame(rows_train, columns=["run", "step", "example_id", "n_samples", "n_correct",
                                                                  "perplexity"]))
    store.write("test_scores", pd.DataFrame(rows_test, columns=["run", "step", "example_id", "n_samples", "n_correct"]))
    (ws / "notes.txt").write_text("a file that is not a directory\n")
    (ws / "a_dir.jsonl").mkdir()
    (ws / "a_dir.html").mkdir()
    (ws / "a_dir.png").mkdir()
    (ws / "bad.yaml").write_text("lr: [1e-3\n")


def copy_store(ws: Path, name: str, edit: Callable) -> None:
    """A copy of the workspace's store with one table changed by edit(train, test) -> (train, test)."""
    import pandas as pd

    shutil.copytree(ws / "store", ws / name)
    train = pd.read_parquet(ws / name / "train_scores.parquet")
    test = pd.read_parquet(ws / name / "test_scores.parquet")
    train, test = edit(train, test)
    train.to_parquet(ws / name / "train_scores.parquet")
    test.to_parquet(ws / name / "test_scores.parquet")


def ppl_below_one(train, test):
    train.loc[3, "perplexity"] = 0.5
    return train, test


def constant_test(train, test):
    test["n_correct"] = 2
    return train, test


def typo_test_run(train, test):
    test.loc[test["run"] == "run3", "run"] = "rnu3"
    return train, test


def write_text(name: str, text: str) -> Callable[[Path], None]:
    return lambda ws: (ws / name).write_text(text, encoding="utf-8")


def truncate(path: str, keep: int | None) -> Callable[[Path], None]:
    """Cut a workspace file to `keep` bytes (None: to half)."""
    def cut(ws: Path) -> None:
        f = ws / path
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2 if keep is None else keep])
    return cut


def first_shard(ws: Path) -> str:
    index = json.loads((ws / "sharded" / "checkpoint-1" / "model.safetensors.index.json").read_text())
    return sorted(set(index["weight_map"].values()))[0]


def lora_bad_base(ws: Path) -> None:
    f = ws / "lora" / "checkpoint-1" / "adapter_config.json"
    cfg = json.loads(f.read_text())
    cfg["base_model_name_or_path"] = "some-org/some-model"
    f.write_text(json.dumps(cfg))


def rendered_pc(ws: Path) -> None:
    """TRL prompt/completion rows that already carry the paper template, as premem curate writes them."""
    rows = [json.loads(line) for line in (ws / "train.jsonl").read_text().splitlines()]
    with open(ws / "rendered.prompt_completion.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({"prompt": r["question"] + "\nAnswer:", "completion": " " + r["answer"] + "\nDone."}) + "\n")


def deep_json(ws: Path) -> None:
    (ws / "deep.jsonl").write_text('{"question": ' + "[" * 100_000 + "]" * 100_000 + ', "answer": "#### 1"}\n')


def u2028(ws: Path) -> None:
    rows = [json.loads(line) for line in (ws / "train.jsonl").read_text().splitlines()]
    rows[0]["question"] = rows[0]["question"].replace(" has ", " has\u2028 ", 1) + "\u0085"
    with open(ws / "u2028.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


# -- the cases --------------------------------------------------------------------------------


def n_examples(n: int) -> Callable[[Path, str], bool]:
    return lambda ws, out: f": {n} examples" in out


def cases(ws: Path) -> list[Case]:
    W = str(ws)
    train, test, pairs, store = f"{W}/train.jsonl", f"{W}/test.jsonl", f"{W}/pairs.jsonl", f"{W}/store"
    score = ["score", "--run", f"{W}/run", "--train", train, "--store", f"{W}/newstore", "sampling.max_new_tokens=8"]
    return [
        # data check
        Case("data check: missing file", ["data", "check", "--data", f"{W}/missing.jsonl"], says=["missing.jsonl"]),
        Case("data check: --out is its --data", ["data", "check", "--data", train, "--out", train], says=["--out"]),
        Case("data check: --out is a directory", ["data", "check", "--data", train, "--out", f"{W}/a_dir.jsonl"],
             says=["a_dir.jsonl"]),
        Case("data check: --out under a file", ["data", "check", "--data", train, "--out", f"{W}/notes.txt/x.jsonl"],
             says=["notes.txt"]),
        Case("data check: a malformed line", ["data", "check", "--data", f"{W}/broken.jsonl"], says=["broken.jsonl", "2"],
             setup=write_text("broken.jsonl", '{"question": "Q?", "answer": "#### 1"}\n{"question": "Q2?", "answer"\n')),
        Case("data check: U+2028 and U+0085 inside strings", ["data", "check", "--data", f"{W}/u2028.jsonl"],
             refuse=False, setup=u2028, check=n_examples(24)),
        Case("data check: 100k-deep nested JSON", ["data", "check", "--data", f"{W}/deep.jsonl"], says=["deep.jsonl"],
             setup=deep_json),
        Case("data check: --data yes (a name YAML reads as true)", ["data", "check", "--data", "yes"], says=["yes"]),
        Case("data check: a path with '#' and ': '", ["data", "check", "--data", f"{W}/exp #2: x.jsonl"], refuse=False,
             setup=lambda ws: shutil.copy(ws / "train.jsonl", ws / "exp #2: x.jsonl"), check=n_examples(24)),
        Case("data check: --limit -1", ["data", "check", "--data", train, "--limit", "-1"], says=["limit"]),
        Case("data check: unknown format", ["data", "check", "--data", train, "--format", "bogus"], says=["bogus"]),
        Case("data check: rendered prompt/completion rows", ["data", "check", "--data",
             f"{W}/rendered.prompt_completion.jsonl"], refuse=False, setup=rendered_pc,
             check=lambda ws, out: ": 24 examples" in out and "already carry the paper template" in out),
        Case("data check: unknown KEY=VALUE", ["data", "check", "--data", train, "colour=red"], says=["colour"]),
        Case("data check: missing --config", ["data", "check", "--config", f"{W}/none.yaml"], says=["none.yaml"]),
        Case("data check: --config not YAML", ["data", "check", "--config", f"{W}/bad.yaml"], says=["bad.yaml"]),
        # predict
        Case("predict: --tau nan", ["predict", "--store", store, "--tau", "nan"], says=["tau"]),
        Case("predict: --tau inf", ["predict", "--store", store, "--tau", "inf"], says=["tau"]),
        Case("predict: missing store", ["predict", "--store", f"{W}/nostore"], says=["nostore"]),
        Case("predict: --store is a file", ["predict", "--store", f"{W}/notes.txt"], says=["notes.txt"]),
        Case("predict: perplexity below 1", ["predict", "--store", f"{W}/store_ppl"], says=["perplexity"],
             setup=lambda ws: copy_store(ws, "store_ppl", ppl_below_one)),
        Case("predict: constant test accuracy", ["predict", "--store", f"{W}/store_const", "--tau", "-2.3"],
             refuse=False, setup=lambda ws: copy_store(ws, "store_const", constant_test),
             check=lambda ws, out: "undefined" in out and "1.000" not in out),
        Case("predict: a test run matching no training run", ["predict", "--store", f"{W}/store_typo", "--tau", "-2.3"],
             refuse=False, says=["rnu3"], setup=lambda ws: copy_store(ws, "store_typo", typo_test_run),
             check=lambda ws, out: "3 runs" in out),
        Case("predict: --plot .txt", ["predict", "--store", store, "--plot", f"{W}/p.txt"], says=["--plot"]),
        Case("predict: --plot is a directory", ["predict", "--store", store, "--plot", f"{W}/a_dir.png"],
             says=["a_dir.png"]),
        # report
        Case("report: --out .txt", ["report", "--store", store, "--out", f"{W}/r.txt"], says=["--out"]),
        Case("report: --out is a directory", ["report", "--store", store, "--out", f"{W}/a_dir.html"], says=["a_dir.html"]),
        Case("report: --tau nan", ["report", "--store", store, "--tau", "nan", "--out", f"{W}/r.html"], says=["tau"]),
        # curate
        Case("curate: --budget 0", ["curate", "--store", store, "--data", train, "--budget", "0", "--out", f"{W}/cur"],
             says=["budget"]),
        Case("curate: --budget -3", ["curate", "--store", store, "--data", train, "--budget", "-3", "--out", f"{W}/cur"],
             says=["budget"]),
        Case("curate: unknown strategy", ["curate", "--store", store, "--data", train, "--strategy", "bogus", "--out",
             f"{W}/cur"], says=["bogus"]),
        Case("curate: --out is its --data", ["curate", "--store", store, "--data", train, "--out", train],
             says=["--out"]),
        Case("curate: --run that is not in the store", ["curate", "--store", store, "--data", train, "--run", "run9",
             "--out", f"{W}/cur"], says=["run9"]),
        Case("curate: --out is a file", ["curate", "--store", store, "--data", train, "--out", f"{W}/notes.txt"],
             says=["notes.txt"]),
        # score
        Case("score: --samples 0", [*score, "--samples", "0"], says=["samples"]),
        Case("score: --samples -1", [*score, "--samples", "-1"], says=["samples"]),
        Case("score: negative temperature", [*score, "sampling.temperature=-1"], says=["temperature"]),
        Case("score: top_p 1.5", [*score, "sampling.top_p=1.5"], says=["top_p"]),
        Case("score: shard_size=0", [*score, "shard_size=0"], says=["shard_size"]),
        Case("score: --store is a file", ["score", "--run", f"{W}/run", "--train", train, "--store", f"{W}/notes.txt"],
             says=["notes.txt"]),
        Case("score: --store is the run", ["score", "--run", f"{W}/run", "--train", train, "--store", f"{W}/run"],
             says=["--store"]),
        Case("score: missing run", ["score", "--run", f"{W}/norun", "--train", train, "--store", f"{W}/newstore"],
             says=["norun"]),
        Case("score: --actors 3 on 2 cores", [*score, "--actors", "3", "shard_size=4"], says=["actors"], timeout=60),
        Case("score: exec.options.threads=4 on 2 cores", [*score, "exec.options.threads=4"], says=["threads"], timeout=60),
        Case("score: --gpus-per-actor 1 without a GPU", [*score, "--gpus-per-actor", "1"], says=["GPU"], timeout=60),
        Case("score: a truncated shard", ["score", "--run", f"{W}/sharded", "--train", train, "--store",
             f"{W}/newstore"], says=["checkpoint-1"], setup=lambda ws: truncate(f"sharded/checkpoint-1/{first_shard(ws)}",
                                                                                  None)(ws)),
        Case("score: an empty safetensors file", [*score], says=["checkpoint-2", "model.safetensors"],
             setup=truncate("run/checkpoint-2/model.safetensors", 0)),
        Case("score: LoRA base that is not a local path", ["score", "--run", f"{W}/lora", "--train", train, "--store",
             f"{W}/newstore"], says=["adapter_config.json", "base_model"], setup=lora_bad_base, timeout=60),
        Case("score: a list field given a word", [*score, "sampling.stop=abc"], says=["stop"]),
        # train
        Case("train: lr=-1", ["train", "--model", f"{W}/base", "--train", train, "--out", f"{W}/trun", "lr=-1"],
             says=["lr"]),
        Case("train: epochs=0", ["train", "--model", f"{W}/base", "--train", train, "--out", f"{W}/trun", "epochs=0"],
             says=["epochs"]),
        Case("train: --out is the model", ["train", "--model", f"{W}/base", "--train", train, "--out", f"{W}/base"],
             says=["--out"]),
        Case("train: missing model", ["train", "--model", f"{W}/nomodel", "--train", train, "--out", f"{W}/trun"],
             says=["nomodel"]),
        Case("train: data_fraction=2", ["train", "--model", f"{W}/base", "--train", train, "--out", f"{W}/trun",
             "data_fraction=2"], says=["data_fraction"]),
        # probe
        Case("probe build: --out is the data file", ["probe", "build", "--data", pairs, "--out", pairs], says=["--out"]),
        Case("probe build: --n 0", ["probe", "build", "--data", pairs, "--out", f"{W}/probes", "--n", "0"], says=["n"]),
        Case("probe track: missing probe set", ["probe", "track", "--run", f"{W}/run", "--probes", f"{W}/noprobes",
             "--store", f"{W}/pstore"], says=["noprobes"]),
        Case("probe track: --store is a file", ["probe", "track", "--run", f"{W}/run", "--probes", f"{W}/noprobes",
             "--store", f"{W}/notes.txt"], says=["notes.txt"]),
        Case("probe show: missing store", ["probe", "show", "--store", f"{W}/nostore"], says=["nostore"]),
        # recipes
        Case("quickstart: benchmark.n_train=-5", ["quickstart", "--out", f"{W}/qs", "benchmark.n_train=-5"],
             says=["n_train"]),
        Case("quickstart: exec.actors=0", ["quickstart", "--out", f"{W}/qs", "exec.actors=0"], says=["exec.actors"]),
        Case("experiment curation: seeds=[]", ["experiment", "curation", "--out", f"{W}/exp", "seeds=[]"], says=["seeds"]),
        Case("experiment probes: dpo_from=[99]", ["experiment", "probes", "--out", f"{W}/pexp", "dpo_from=[99]"],
             says=["dpo_from"]),
        Case("curate loop: sizes=abc", ["curate", "loop", "--out", f"{W}/loop", "sizes=abc"], says=["sizes"]),
        Case("regrade: missing store", ["regrade", "--store", f"{W}/nostore"], says=["nostore"]),
        # names are names
        Case("data check: --out 'exp #2'.jsonl", ["data", "check", "--data", train, "--out", f"{W}/out #2.jsonl"],
             refuse=False, check=lambda ws, out: (ws / "out #2.jsonl").is_file() and not (ws / "out ").exists()),
    ]


# -- running ----------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under root with its size and sha256 (directories as entries too)."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            seen[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = (0, "")
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                seen[os.path.relpath(p, root)] = (os.path.getsize(p), hashlib.sha256(fh.read()).hexdigest())
    return seen


def run_case(case: Case, ws: Path, timeout: float, env: dict) -> tuple[str, float, str, str]:
    if case.setup:
        case.setup(ws)
    before = snapshot(ws)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "premem.cli", *case.argv], cwd=ws, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=case.timeout or timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return "hang", time.perf_counter() - start, out, err
    took = time.perf_counter() - start
    changed = snapshot(ws) != before
    # premem's own log lines (what it is about to do) may come first; anything else is noise
    lines = [line for line in err.strip().splitlines() if line.strip() and not PREMEM_LOG.match(line)]
    if "Traceback (most recent call last)" in err or proc.returncode not in (0, 2):
        return "traceback", took, out, err
    if case.refuse:
        if proc.returncode == 0:
            return "silent wrong", took, out, err
        if changed:
            return "written", took, out, err
        one_line = len(lines) == 1 and lines[0].startswith("premem: error: ")
        named = all(s in (lines[0] if lines else "") for s in case.says)
        return ("clear error" if one_line and named else "silent wrong"), took, out, err
    if proc.returncode != 0:
        return "silent wrong", took, out, err
    right = all(s in out + err for s in case.says) and (case.check is None or case.check(ws, out + err))
    return ("right result" if right else "silent wrong"), took, out, err


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", default="", help="run only the cases whose name contains this")
    ap.add_argument("--timeout", type=float, default=120, help="seconds before a case counts as a hang")
    ap.add_argument("--keep", action="store_true", help="keep the workspaces (printed)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each case's stdout and stderr")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="premem-bad-inputs-"))
    env = {**os.environ, "RAY_TMPDIR": str(tmp / "ray"), "PYTHONPATH": str(REPO)}
    (tmp / "ray").mkdir()
    template = tmp / "template"
    template.mkdir()
    t0 = time.perf_counter()
    build_workspace(template)
    print(f"workspace built in {time.perf_counter() - t0:.0f} s: {template}", flush=True)

    counts = dict.fromkeys(OUTCOMES, 0)
    bad = []
    selected = [c for c in cases(template) if args.k in c.name]
    for i, case in enumerate(selected):
        ws = tmp / f"case{i:02d}"
        shutil.copytree(template, ws, symlinks=True)
        case.argv = [a.replace(str(template), str(ws)) for a in case.argv]
        outcome, took, out, err = run_case(case, ws, args.timeout, env)
        counts[outcome] += 1
        first = (err.strip().splitlines() or [""])[-1] if outcome != "right result" else (out.strip().splitlines() or [""])[0]
        print(f"{outcome:<13} {took:5.1f} s  {case.name:<50} {first[:140]}", flush=True)
        if args.verbose or outcome not in ("clear error", "right result"):
            bad.append((case, outcome, out, err))
        if not args.keep:
            shutil.rmtree(ws, ignore_errors=True)
    for case, outcome, out, err in bad:
        print(f"\n== {case.name}: {outcome}\n$ premem {' '.join(case.argv)}\n{out[-2000:]}{err[-3000:]}")
    print(f"\n{len(selected)} cases: " + ", ".join(f"{counts[o]} {o}" for o in OUTCOMES))
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if any(counts[o] for o in OUTCOMES[2:]) else 0


if __name__ == "__main__":
    sys.exit(main())
