"""The tiny base model the recipes start from: a Llama built here and pretrained briefly on text related
to the arithmetic benchmark (premem.data.arith), reused while its settings are unchanged.

    base = build_base_model(BaseModelConfig(), ArithConfig(), Path("out/base"))

The quickstart, the curation experiment and the probes experiment all start from it; each recipe
names the settings under its `model:` key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from premem.data.arith import ArithConfig
from premem.data.tasks import Benchmark, generate, pretraining_texts
from premem.errors import InputError
from premem.execution import check_int, check_number
from premem.files import atomic_path

log = logging.getLogger(__name__)


@dataclass
class BaseModelConfig:
    """The tiny decoder every run starts from."""

    hidden_size: int = 64
    """Width (heads * 32: head size 32 is one vLLM's CPU kernels support)."""
    layers: int = 2
    """Transformer blocks."""
    heads: int = 2
    """Attention heads."""
    vocab_size: int = 1024
    """Byte-level BPE vocabulary trained on the benchmark's text."""
    pretrain_steps: int = 800
    """Causal-LM steps on the related text before any finetuning."""
    pretrain_lr: float = 3e-3
    """Peak learning rate of the pretraining."""
    pretrain_problems: int = 2000
    """Problems, in the pretraining corpus's own phrasing, among the related text."""
    fact_passes: int = 8
    """Times each arithmetic fact appears in the related text."""
    seed: int = 0
    """Seed of the initial weights and of the pretraining batches."""

    def validate(self, prefix: str = "") -> None:
        """One InputError naming the first bad setting (prefix: where the config sits, e.g. "model.")."""
        for name, least in (("hidden_size", 1), ("layers", 1), ("heads", 1), ("pretrain_steps", 1),
                            ("pretrain_problems", 0), ("fact_passes", 1), ("seed", 0)):
            check_int(prefix + name, getattr(self, name), least)
        if self.hidden_size % self.heads:
            raise InputError(f"{prefix}hidden_size: {self.hidden_size} is not a multiple of heads ({self.heads})")
        check_int(prefix + "vocab_size", self.vocab_size, 260)  # byte-level BPE: 256 bytes, 4 special tokens at least
        check_number(prefix + "pretrain_lr", self.pretrain_lr, lambda lr: lr > 0, "a number > 0")


def build_base_model(cfg: BaseModelConfig, bench: Benchmark, base: Path, progress: bool = True,
                     vocab_rows: list[dict] | None = None) -> Path:
    """The tiny model, pretrained on related text; reused while its settings are unchanged.

    vocab_rows: finetuning-style problems the tokenizer also learns from (default: the benchmark's
    training problems). Without them the traces' phrasings split into ~35% more tokens, and every
    run learns less from the same examples."""
    from premem.train.tiny import build_tiny_model, pretrain_briefly  # torch: only when a model is built

    base = Path(base)
    marker = base / "premem_base.json"
    settings = {"model": dataclasses.asdict(cfg), "benchmark": dataclasses.asdict(bench)}
    if not isinstance(bench, ArithConfig):  # a skills base model is another model (arith's marker stays as it was)
        settings["task"] = type(bench).__name__
    if vocab_rows is None:  # the default follows from the benchmark's settings, already recorded
        vocab_rows = generate(bench)[0]
    else:
        settings["vocab_rows"] = rows_fingerprint(vocab_rows)
    if marker.is_file() and json.loads(marker.read_text()) == json.loads(json.dumps(settings)):
        log.info("base model: reusing %s", base)
        return base
    marker.unlink(missing_ok=True)
    texts = pretraining_texts(bench, n_problems=cfg.pretrain_problems, fact_passes=cfg.fact_passes)
    # the tokenizer also sees the finetuning traces, so their words are whole tokens
    vocab_text = texts + [r["question"] + "\nAnswer: " + r["answer"] for r in vocab_rows]
    build_tiny_model(vocab_text, base, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, layers=cfg.layers,
                     heads=cfg.heads, seed=cfg.seed)
    loss = pretrain_briefly(base, texts, steps=cfg.pretrain_steps, lr=cfg.pretrain_lr, seed=cfg.seed, threads=1,
                            progress=progress)
    log.info("base model: pretrained %d steps, last loss %.3f", cfg.pretrain_steps, loss)
    with atomic_path(marker) as tmp:
        tmp.write_text(json.dumps(settings, indent=1))
    return base


def rows_fingerprint(rows: list[dict]) -> str:
    """A short hash of problems (question and answer): what the base model's marker records of vocab_rows."""
    return hashlib.sha256("\n".join(r["question"] + r["answer"] for r in rows).encode()).hexdigest()[:16]
