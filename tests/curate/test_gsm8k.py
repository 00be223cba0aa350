"""The real thing: a quarter of GSM8K's training set curated from the paper's own scores, trained on with TRL."""

import json

import numpy as np
import pandas as pd
import pytest

from premem.cli import main
from tests.conftest import PAPER_STORE, SHARED, needs_shared

pytestmark = needs_shared

GSM8K_TRAIN = SHARED / "gsm8k" / "train.jsonl"
RUN = "gsm8k_orig_6epochs_full_lr2e-05_bs128"


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    out = tmp_path_factory.mktemp("curated") / "gsm8k-premem-low"
    code = main(["curate", "--store", str(PAPER_STORE), "--data", str(GSM8K_TRAIN), "--strategy", "premem_low",
                 "--budget", "0.25", "--run", RUN, "--tau", "-2.3", "--out", str(out)])
    assert code == 0
    return out


def test_paper_store_ids_are_the_rows_of_the_data_file():
    """The store keeps no text, but it keeps each gold target's token count (Llama-3 tokenizer) for most runs:
    it must follow the length of the file's answer on the same row, and not on the next one."""
    train = pd.read_parquet(PAPER_STORE / "train_scores.parquet", columns=["example_id", "n_target_tokens"])
    tokens = train[train["n_target_tokens"] > 0].groupby("example_id")["n_target_tokens"].first()
    chars = np.array([len(json.loads(line)["answer"]) for line in GSM8K_TRAIN.read_text().splitlines()])
    assert list(tokens.index) == list(range(len(chars))) == list(range(7473))
    assert np.corrcoef(chars, tokens.to_numpy())[0, 1] > 0.95
    assert abs(np.corrcoef(chars[1:], tokens.to_numpy()[:-1])[0, 1]) < 0.1  # off by one row: no relation


def test_a_quarter_of_gsm8k_with_the_lowest_premem(curated):
    m = json.loads((curated / "manifest.json").read_text())
    assert m["strategy"]["name"] == "premem_low" and m["runs"] == [RUN] and m["tau"] == -2.3
    assert m["budget"] == {"requested": 0.25, "n": 1868, "candidates": 7473, "data_examples": 7473, "rows_written": 1868}
    assert m["info"] == {"n_low": 4421, "threshold": 0.75, "n_filled_above_threshold": 0}
    ex = pd.DataFrame(m["examples"])
    assert ex.loc[ex["selected"], "score"].max() < 0.75 <= ex["score"].max()
    lines = GSM8K_TRAIN.read_bytes().splitlines(keepends=True)
    assert (curated / "train.jsonl").read_bytes() == b"".join(lines[i] for i in m["rows"])
    assert set(m["store"]["sha256"]) == {"runs.parquet", "train_scores.parquet"}


def test_the_prompt_completion_export_trains_in_trl_unchanged(curated, tmp_path):
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from premem.train.tiny import build_tiny_model

    path = curated / "train.prompt_completion.jsonl"
    dataset = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert dataset.num_rows == 1868 and {"prompt", "completion"} <= set(dataset.column_names)
    texts = [r["prompt"] + r["completion"] for r in dataset.select(range(200))]
    model_dir = build_tiny_model(texts, tmp_path / "tiny", vocab_size=512, hidden_size=64, layers=2, heads=2,
                                 max_position_embeddings=512, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = SFTConfig(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4, max_length=256,
                         learning_rate=1e-3, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
                         logging_steps=1, dataloader_num_workers=0)
        trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, train_dataset=dataset,
                             processing_class=AutoTokenizer.from_pretrained(model_dir))
        result = trainer.train()
    finally:
        torch.set_num_threads(threads)
    assert result.global_step == 2 and np.isfinite(result.training_loss)
