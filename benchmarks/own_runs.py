"""Finetuning runs made the way other tools make them, to follow the README's "Score your own run" on.

Nothing here uses premem's trainer: a tiny Llama (built and pretrained offline) is finetuned on
the tiny benchmark with a plain transformers `Trainer` (full weights, sharded safetensors with
`model.safetensors.index.json`, optimizer pickles beside them) and with peft LoRA through the same
`Trainer` (adapters only, `adapter_config.json` naming the base directory). Writes, under OUT:

    train.jsonl, test.jsonl        GSM8K-form data (question, answer ending "#### N")
    base/                          the base model
    runs/full-lr1e-3/, runs/full-lr3e-3/, runs/lora/   checkpoint-<step>/ every epoch

    python benchmarks/own_runs.py OUT [--base premem-quickstart/base] [--epochs 32]   # 2-4 minutes on 2 cores

A tiny model is far below the 50 GB at which `save_pretrained` starts a new shard, so the shard size
is lowered for these runs: the files are what a large model's Trainer run holds.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
from pathlib import Path

import torch


def render(question: str, answer: str) -> tuple[str, str]:
    return question + "\nAnswer:", " " + answer + "\nDone."  # the paper's template, as premem scores it


class PromptCompletion(torch.utils.data.Dataset):
    """Token ids of prompt + completion, the loss on the completion only."""

    def __init__(self, rows: list[dict], tokenizer):
        self.items = []
        for r in rows:
            prompt, target = render(r["question"], r["answer"])
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            t = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            self.items.append({"input_ids": p + t, "labels": [-100] * len(p) + t})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collate(batch, pad_id: int):
    n = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), n), pad_id)
    labels = torch.full((len(batch), n), -100)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, b in enumerate(batch):
        k = len(b["input_ids"])
        ids[i, :k], labels[i, :k], mask[i, :k] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def finetune(model, tokenizer, rows: list[dict], out: Path, lr: float, epochs: int, checkpoints: int) -> None:
    from transformers import Trainer, TrainingArguments

    steps = epochs * -(-len(rows) // 8)
    args = TrainingArguments(
        output_dir=str(out), num_train_epochs=epochs, learning_rate=lr, per_device_train_batch_size=8,
        save_strategy="steps", save_steps=-(-steps // checkpoints), logging_strategy="no", report_to=[], use_cpu=True,
        seed=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=PromptCompletion(rows, tokenizer),
                      data_collator=functools.partial(collate, pad_id=tokenizer.pad_token_id),
                      processing_class=tokenizer)
    trainer.train()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=int, default=32)
    ap.add_argument("--checkpoints", type=int, default=4, help="checkpoints per run, evenly spaced")
    ap.add_argument("--base", type=Path, help="start from this model (e.g. premem-quickstart/base) instead of "
                    "building and pretraining one")
    ap.add_argument("--n-train", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(2)

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

    from premem.data import arith
    from premem.train.tiny import build_tiny_model, pretrain_briefly

    cfg = arith.ArithConfig(n_train=args.n_train, n_test=32, seed=0)
    train, test = arith.generate(cfg)
    arith.write_jsonl(train, args.out / "train.jsonl")
    arith.write_jsonl(test, args.out / "test.jsonl")
    texts = arith.pretraining_texts(cfg, n_problems=600)
    base = args.base or args.out / "base"
    if not base.exists():  # built beside, renamed when pretrained: a killed build is not taken for a base
        tmp = args.out / ".base.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        build_tiny_model(texts, tmp, seed=0)
        pretrain_briefly(tmp, texts, steps=400, lr=3e-3, seed=0, threads=2)
        tmp.rename(base)

    # what a large model's run holds: shards and an index (see the module docstring)
    PreTrainedModel.save_pretrained = functools.partialmethod(PreTrainedModel.save_pretrained, max_shard_size="300KB")
    tokenizer = AutoTokenizer.from_pretrained(base)
    for lr in (1e-3, 3e-3):
        out = args.out / "runs" / f"full-lr{lr:.0e}".replace("e-0", "e-")
        if not out.exists():
            finetune(AutoModelForCausalLM.from_pretrained(base), tokenizer, train, out, lr, args.epochs, args.checkpoints)
    out = args.out / "runs" / "lora"
    if not out.exists():
        lora = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                              LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
        finetune(lora, tokenizer, train, out, 2e-2, args.epochs, args.checkpoints)  # LoRA wants a larger lr
    for run in sorted((args.out / "runs").iterdir()):
        ckpts = sorted((p.name for p in run.glob("checkpoint-*")), key=lambda n: int(n.split("-")[1]))
        files = sorted(p.name for p in (run / ckpts[-1]).iterdir())
        print(f"{run}: {', '.join(ckpts)}; {ckpts[-1]} holds {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
