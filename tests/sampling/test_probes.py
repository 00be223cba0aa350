"""premem probe build and track end to end: a tiny Llama trained with premem train (SFT on both
responses, then DPO from its last checkpoint: the extend recipe), a probe set with the model's
own rephrases, tracked on real Ray actors; log-probs and the greedy response checked against a
direct transformers computation; resuming; bad input as one line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from premem.cli import main
from premem.data.arith import ArithConfig, generate, preference_pairs, sft_both, write_jsonl
from premem.data.probes import PROBES_FILE, load_probes
from premem.runs import find_checkpoints
from premem.store import ScoreStore
from premem.train.api import train
from premem.train.config import TrainConfig

pytestmark = pytest.mark.slow

ARITH = ArithConfig(n_train=48, n_test=0, max_number=20, max_operand=5, steps=(2, 2), seed=0)
PAIR_KEYS = ("prompt", "chosen", "rejected")
N_PROBES = 4


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """Preference pairs, a tiny model, an SFT run on both responses and a DPO run from its end, a probe set."""
    from premem.train.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("probes")
    pairs = preference_pairs(ARITH, 16, seed=0)
    pairs_file = write_jsonl(pairs, root / "pairs.jsonl", keys=PAIR_KEYS)
    both = write_jsonl(sft_both(pairs), root / "both.jsonl")
    texts = [p["prompt"] + "\nAnswer: " + p["chosen"] + "\nDone." for p in pairs]
    texts += [r["question"] + "\nAnswer: " + r["answer"] + "\nDone." for r in generate(ARITH)[0]]
    model = build_tiny_model(texts, root / "model", vocab_size=384, hidden_size=64, layers=2, heads=2,
                             max_position_embeddings=256, seed=0)

    def run(start: Path, data: Path, out: str, **kw) -> Path:
        values = dict(model=str(start), out=str(root / out), lr=3e-3, epochs=2, batch_size=8, max_length=256,
                      threads=1, progress=False) | kw
        cfg = TrainConfig(**values)
        cfg.train.path = str(data)
        return train(cfg)

    sft = run(model, both, "sft")  # 32 rows in batches of 8: checkpoints at steps 4 and 8
    dpo = run(find_checkpoints(sft)[-1].path, pairs_file, "dpo", method="dpo", lr=1e-3)  # steps 2 and 4
    assert main(["probe", "build", "--data", str(pairs_file), "--out", str(root / "probes"), "--n", str(N_PROBES),
                 "--model", str(sft), "rephrase_max_new_tokens=24"]) == 0
    return {"root": root, "pairs": pairs_file, "model": model, "sft": sft, "dpo": dpo, "probes": root / "probes"}


@pytest.fixture(scope="module")
def tracked(work) -> dict:
    """Both runs tracked into one store through the CLI (each from its starting model, step 0)."""
    import contextlib
    import io

    store = work["root"] / "store"
    out = {}
    for name, base in (("sft", work["model"]), ("dpo", find_checkpoints(work["sft"])[-1].path)):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = main(["probe", "track", "--run", str(work[name]), "--probes", str(work["probes"]), "--store",
                         str(store), "--data", str(work["pairs"]), "--base", str(base), "exec.progress=false",
                         "exec.options.batch_size=8"])
        assert code == 0
        out[name] = buf.getvalue()
    return {"store": store, "out": out}


def direct_logprob(model_dir: Path, prompt: str, target_ids: list[int]) -> float:
    """log π(target | prompt) by transformers directly, the prompt in the paper template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    p = tokenizer(prompt + "\nAnswer:")["input_ids"]
    ids = torch.tensor([p + target_ids])
    with torch.no_grad():
        logprobs = model(ids).logits[0, :-1].float().log_softmax(-1)
    return logprobs[len(p) - 1 :].gather(1, ids[0, len(p) :, None]).sum().item()


def greedy_direct(model_dir: Path, prompt: str, chosen: str) -> tuple[list[int], float]:
    """y*: the argmax at each position of [prompt; chosen] (teacher-forced on the chosen response), and the sum
    of those argmax tokens' log-probabilities under the same teacher forcing (Ren & Sutherland's measure)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    p = tokenizer(prompt + "\nAnswer:")["input_ids"]
    t = tokenizer(" " + chosen + "\nDone.", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([p + t])).logits[0]
    best = logits[len(p) - 1 : len(p) + len(t) - 1].float().log_softmax(-1).max(-1)
    return best.indices.tolist(), float(best.values.sum())


def test_the_probe_set_has_every_type_and_the_models_rephrases(work):
    probes = load_probes(work["probes"])
    types = {r.type for r in probes.rows}
    assert types >= {"chosen", "rejected", "other_chosen", "irrelevant", "random_sentence", "shuffled_chosen",
                     "shuffled_irrelevant", "random_tokens"}
    rephrases = [r for r in probes.rows if r.type.startswith("rephrase_")]
    assert rephrases and all(r.model_written for r in rephrases)
    assert all(not r.model_written for r in probes.rows if not r.type.startswith("rephrase_"))
    assert probes.manifest["model"]["rephrased"] == len(rephrases)


def test_every_checkpoint_and_response_is_tracked(work, tracked):
    probes = load_probes(work["probes"])
    df = ScoreStore(tracked["store"]).read("probe_scores")
    assert not (tracked["store"] / "parts" / "probe_scores").exists() or not any(
        (tracked["store"] / "parts" / "probe_scores").iterdir())  # compacted
    for run, steps in (("sft", [0, 4, 8]), ("dpo", [0, 2, 4])):
        part = df[df["run"] == run]
        assert sorted(part["step"].unique()) == steps
        assert len(part) == len(steps) * (len(probes.rows) + N_PROBES)  # every row, plus one greedy per prompt
        assert (part["sum_logprob"] < 0).all() and (part["n_tokens"] > 0).all()
        assert part["mean_logprob"].tolist() == pytest.approx((part["sum_logprob"] / part["n_tokens"]).tolist())
        greedy = part[part["type"] == "greedy"]
        assert greedy["text"].notna().all() and part.loc[part["type"] != "greedy", "text"].isna().all()


def test_log_probs_match_transformers(work, tracked):
    from transformers import AutoTokenizer

    df = ScoreStore(tracked["store"]).read("probe_scores").set_index(["run", "step", "probe_id", "type"])
    probes = load_probes(work["probes"])
    last = find_checkpoints(work["dpo"])[-1].path
    tokenizer = AutoTokenizer.from_pretrained(last)
    picked = [r for r in probes.rows if r.type in ("chosen", "rephrase_rejected", "random_tokens")][:5]
    for r in picked:
        t = tokenizer(" " + r.response + "\nDone.", add_special_tokens=False)["input_ids"]
        stored = df.loc[("dpo", 4, r.probe_id, r.type)]
        assert stored["n_tokens"] == len(t)
        assert stored["sum_logprob"] == pytest.approx(direct_logprob(last, r.prompt, t), abs=1e-3)
    chosen = next(r for r in probes.rows if r.type == "chosen")
    y_star, y_star_logprob = greedy_direct(last, chosen.prompt, chosen.response)
    stored = df.loc[("dpo", 4, chosen.probe_id, "greedy")]
    assert stored["text"] == tokenizer.decode(y_star, skip_special_tokens=True)
    assert stored["sum_logprob"] == pytest.approx(y_star_logprob, abs=1e-3) and stored["n_tokens"] == len(y_star)
    # the argmax tokens' log-probs, each at most the gold token's: y* is never less likely than y+ this way
    assert y_star_logprob >= df.loc[("dpo", 4, chosen.probe_id, "chosen")]["sum_logprob"] - 1e-3
    base = work["model"]  # step 0 of the SFT run is its starting model
    assert df.loc[("sft", 0, chosen.probe_id, "chosen")]["sum_logprob"] == pytest.approx(
        direct_logprob(base, chosen.prompt, tokenizer(" " + chosen.response + "\nDone.", add_special_tokens=False)[
            "input_ids"]), abs=1e-3)


def test_track_prints_the_type_table_and_the_verdict(tracked):
    for run, steps in (("sft", "0, 4, 8"), ("dpo", "0, 2, 4")):
        out = tracked["out"][run]
        assert f"{run}: 3 checkpoints (steps {steps}); 3 tracked, 0 already done" in out
        assert f"{run}: mean summed log π(response | prompt) over {N_PROBES} probe prompts" in out
        header = next(line for line in out.splitlines() if line.startswith("type"))
        assert header.split()[:3] == ["type", "chosen", "rejected"] and header.split()[-1] == "greedy"
        assert f"{run}: squeezing " in out and "(change of summed log-prob, mean ± s.e. over prompts, step 0 -> " in out


def test_a_rerun_skips_done_work_and_show_prints_the_store(work, tracked, capsys, monkeypatch):
    import premem.execution.actor_pool as actor_pool

    monkeypatch.setattr(actor_pool, "run_tasks", lambda *a, **k: pytest.fail("a tracked checkpoint was scored again"))
    before = ScoreStore(tracked["store"]).read("probe_scores")
    assert main(["probe", "track", "--run", str(work["dpo"]), "--probes", str(work["probes"]), "--store",
                 str(tracked["store"]), "--base", str(find_checkpoints(work["sft"])[-1].path), "exec.progress=false"]) == 0
    assert "0 tracked, 3 already done" in capsys.readouterr().out
    assert ScoreStore(tracked["store"]).read("probe_scores").equals(before)
    assert main(["probe", "show", "--store", str(tracked["store"])]) == 0
    out = capsys.readouterr().out
    assert out.index("dpo: mean summed") < out.index("dpo: squeezing") < out.index("sft: mean summed")


def probe_copy(work, tmp_path: Path) -> Path:
    folder = tmp_path / "probes"
    shutil.copytree(work["probes"], folder)
    return folder


@pytest.mark.parametrize("bad", ["other_data", "unknown_type", "missing_field"])
def test_bad_probe_input_is_one_line_exit_2_nothing_written(bad, work, tmp_path, capsys):
    folder = probe_copy(work, tmp_path)
    data = work["pairs"]
    if bad == "other_data":
        data = write_jsonl(preference_pairs(ARITH, 16, seed=1), tmp_path / "other.jsonl", keys=PAIR_KEYS)
        needle = f"{folder / 'manifest.json'}: a probe file built for another dataset"
    else:
        lines = (folder / PROBES_FILE).read_text().splitlines()
        row = json.loads(lines[2])
        row.update(type="sideways") if bad == "unknown_type" else row.pop("prompt")
        lines[2] = json.dumps(row)
        (folder / PROBES_FILE).write_text("\n".join(lines) + "\n")
        needle = f"{folder / PROBES_FILE} row 2 (line 3): " + (
            "unknown type 'sideways'" if bad == "unknown_type" else "field 'prompt' is missing")
    store = tmp_path / "store"
    code = main(["probe", "track", "--run", str(work["dpo"]), "--probes", str(folder), "--store", str(store),
                 "--data", str(data), "exec.progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"premem: error: {needle}"), err
    assert not store.exists()


@pytest.mark.parametrize("setting, value", [("exec.actors", "0"), ("exec.gpus_per_actor", "-1"),
                                            ("exec.options.threads", "0"), ("exec.options.batch_size", "0"),
                                            ("exec.options.device", "tpu"), ("exec.backend", "tgi")])
def test_a_bad_track_setting_is_refused_before_anything_is_read_or_written(tmp_path, capsys, setting, value):
    # run and probes do not exist: the settings are checked first
    code = main(["probe", "track", "--run", str(tmp_path / "run"), "--probes", str(tmp_path / "probes"), "--store",
                 str(tmp_path / "store"), f"{setting}={value}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"premem: error: {setting}: ") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_lora_run_whose_base_is_elsewhere_is_tracked_with_base_model(work, tmp_path):
    """adapter_config.json names a base that is not on this machine: one line saying so and what to set;
    base_model=DIR then tracks the adapter on that base (the message's advice works for probe track too)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(work["model"]),
                          LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "run" / "checkpoint-1")
    config = tmp_path / "run" / "checkpoint-1" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": "some-org/base"}))
    shutil.copy(work["model"] / "tokenizer.json", tmp_path / "run")
    shutil.copy(work["model"] / "tokenizer_config.json", tmp_path / "run")
    argv = ["probe", "track", "--run", str(tmp_path / "run"), "--probes", str(work["probes"]), "--store",
            str(tmp_path / "store"), "exec.progress=false"]
    with pytest.raises(Exception) as refused:
        from premem.execution import ExecConfig
        from premem.sampling.probes import ProbeTrackConfig, track

        track(ProbeTrackConfig(run=str(tmp_path / "run"), probes=str(work["probes"]), store=str(tmp_path / "store"),
                               exec=ExecConfig(progress=False)))
    assert "adapter_config.json" in str(refused.value) and "base_model=" in str(refused.value)
    assert not (tmp_path / "store").exists()
    assert main([*argv, f"base_model={work['model']}"]) == 0
    scores = ScoreStore(tmp_path / "store").read("probe_scores")
    assert set(scores["step"]) == {1} and scores["sum_logprob"].notna().all()
