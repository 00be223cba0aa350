"""A tiny Llama and its tokenizer, built offline from a list of texts.

There is no model hub in the offline world, so tests (and small benchmarks) build their own
model: a byte-level BPE tokenizer trained on the task's text, and a randomly initialised
LlamaForCausalLM of a few hundred thousand parameters, saved as a normal Hugging Face model
directory (config.json + model.safetensors + tokenizer files) that transformers and vLLM
both load.

    path = build_tiny_model(texts, "tiny")           # random weights
    pretrain_briefly(path, texts, steps=300)         # a few hundred causal-LM steps

A random model's next-token distribution is nearly flat, so its greedy choice is often a
near-tie that two correct implementations break differently (HF and vLLM sum in different
orders). A few hundred steps of training make the distribution peaked: greedy decoding then
agrees across backends, and samples look like the task's text (they end with its stop string).

Both functions are deterministic for a given seed (and thread count: CPU kernels sum in a
thread-dependent order).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3
# A minimal chat format, so code that uses the tokenizer's chat template runs on the tiny model.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
# vLLM's CPU attention kernels only support these head sizes (hidden_size / heads);
# 16 loads but fails at the first request.
VLLM_CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def train_tokenizer(texts: list[str], vocab_size: int = 1024, max_length: int = 512):
    """A byte-level BPE tokenizer trained on texts; encode() prepends <s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))  # byte-level: every text encodes, <unk> unused
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, whatever the texts hold
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_length,
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_model(
    texts: list[str],
    out_dir: str | Path,
    *,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 2,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on texts, initialise a tiny Llama with torch seed `seed`, save both to out_dir.

    heads defaults to 2 so that head_dim = 32, a size vLLM's CPU kernels support.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden_size % heads:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of heads {heads}")
    out = Path(out_dir)
    tokenizer = train_tokenizer(texts, vocab_size, max_position_embeddings)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)  # safetensors
    tokenizer.save_pretrained(out)
    return out


def pretrain_briefly(
    model_dir: str | Path,
    texts: list[str],
    *,
    steps: int = 300,
    lr: float = 3e-3,
    seed: int = 0,
    batch_size: int = 16,
    block_size: int = 128,
    threads: int | None = None,
    progress: bool = False,
) -> float:
    """A few hundred plain causal-LM steps on texts; saves the model back into model_dir.

    nanoGPT-style: every text is tokenized as <s> text </s>, all are concatenated into one
    stream, and each step trains on batch_size random windows of block_size tokens (no
    padding to waste compute on). Returns the last step's loss.

    threads: torch threads while training (restored after); None keeps torch's setting. On a
    machine other jobs share, one thread is the safe choice: with every core asked for,
    OpenMP threads spin waiting for each other and a step can take 5-25x longer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)  # never the hub
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    encoded = tokenizer(texts, verbose=False)["input_ids"]  # verbose=False: texts may exceed model_max_length
    ids = [i for text_ids in encoded for i in text_ids + [tokenizer.eos_token_id]]
    stream = torch.tensor(ids)
    block_size = min(block_size, len(stream) - 1, model.config.max_position_embeddings)
    if block_size < 2:
        raise ValueError(f"pretrain_briefly: {len(stream)} tokens of text is too little to train on")

    g = torch.Generator().manual_seed(seed)  # the windows drawn; the model's own init is build_tiny_model's
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    # linear warm-up then cosine decay: stable at a high learning rate, and few steps suffice
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / max(steps, 1)))
    )
    from tqdm.auto import tqdm

    model.train()
    loss = float("nan")
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        for _ in (bar := tqdm(range(steps), desc="pretraining", unit="step", disable=not progress)):
            starts = torch.randint(0, len(stream) - block_size, (batch_size,), generator=g)
            x = torch.stack([stream[s : s + block_size] for s in starts])
            out = model(input_ids=x, labels=x)  # labels are shifted inside the model
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss = out.loss.item()
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
    finally:
        torch.set_num_threads(before)
    model.eval()
    model.save_pretrained(model_dir)
    return loss
