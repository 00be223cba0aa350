"""Checkpoints on disk for the tests of premem.runs and premem.models: Trainer runs, final models,
LoRA adapters, GGUF files, sharded safetensors.

Every model is a tiny Llama built here (hidden 32, one layer) with a word-level tokenizer
built here too: no hub. GGUF files are written by a small GGUF v3 writer below (f32
tensors), so only loading them needs the `gguf` package; LoRA fixtures need peft.
"""

from __future__ import annotations

import importlib.util
import json
import struct

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from premem.execution import BackendOptions

HAS_PEFT = importlib.util.find_spec("peft") is not None
HAS_GGUF = importlib.util.find_spec("gguf") is not None
needs_peft = pytest.mark.skipif(not HAS_PEFT, reason="peft is not installed")
needs_gguf = pytest.mark.skipif(not HAS_GGUF, reason="gguf is not installed")
CPU = BackendOptions(device="cpu")
WORDS = "the cat sat on a mat and answer question done 0 1 2 3 4 5 6 7 8 9".split()
PROBE = torch.tensor([[1, 4, 5, 6, 7, 2]])

# a GGUF v3 file holding no tensors and no metadata: a readable header, all discovery needs
EMPTY_GGUF = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)


def word_tokenizer(extra: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "<pad>", *WORDS, *extra])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


def tiny_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def save(model, folder, tokenizer=None, global_step=None, trainer_files=False):
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if global_step is not None:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": global_step, "max_steps": 100}))
    if trainer_files:  # pickles the Trainer saves beside the weights: not weights, never refused
        for name in ("optimizer.pt", "scheduler.pt", "training_args.bin", "rng_state.pth"):
            (folder / name).write_bytes(b"\x80\x04N.")
    return folder


@torch.no_grad()
def logits(model):
    return model(PROBE).logits


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory, tok):
    """checkpoint-10 (with tokenizer), checkpoint-20 (without), a final model with trainer_state (step 25)."""
    run = tmp_path_factory.mktemp("runs") / "r1"
    found = {}
    for step, seed in ((10, 1), (20, 2)):
        m = tiny_model(len(tok), seed)
        save(m, run / f"checkpoint-{step}", tok if step == 10 else None, global_step=step, trainer_files=True)
        found[step] = m
    found[25] = tiny_model(len(tok), 3)
    save(found[25], run, tok, global_step=25)
    (run / "training_args.bin").write_bytes(b"\x80\x04N.")
    return run, found


def pickle_run(tmp_path, tok):
    """A run whose one checkpoint holds pickle weights only (pytorch_model.bin); returns (run, folder, model)."""
    m = tiny_model(len(tok))
    folder = tmp_path / "run" / "checkpoint-4"
    folder.mkdir(parents=True)
    m.config.save_pretrained(folder)
    tok.save_pretrained(folder)
    torch.save(m.state_dict(), folder / "pytorch_model.bin")
    return tmp_path / "run", folder, m


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tok):
    """A base model (with tokenizer) and a run of two LoRA checkpoints on it (without)."""
    import peft

    root = tmp_path_factory.mktemp("lora")
    base = tiny_model(len(tok), 7)
    save(base, root / "base", tok)
    merged = {}
    for step, seed in ((5, 11), (9, 12)):
        torch.manual_seed(seed)
        config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        pm = peft.get_peft_model(LlamaForCausalLM.from_pretrained(root / "base"), config).eval()
        pm.save_pretrained(root / "run" / f"checkpoint-{step}")
        merged[step] = logits(pm)
    return root, merged


# -- GGUF ------------------------------------------------------------------------------------


def bpe_tokenizer() -> Tokenizer:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(["the cat sat on the mat and the answer is 42 Done."] * 20, trainer)
    return bpe


GGUF_NAMES = {
    "model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def write_gguf(path, model: LlamaForCausalLM, bpe: Tokenizer) -> None:
    """A GGUF v3 file of a Llama model (f32 tensors) with a gpt2-style BPE tokenizer, as llama.cpp writes one."""
    cfg = model.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads

    def s(x: str) -> bytes:
        return struct.pack("<Q", len(x.encode())) + x.encode()

    kv = []
    u32 = lambda k, v: kv.append(s(k) + struct.pack("<II", 4, v))  # noqa: E731
    f32 = lambda k, v: kv.append(s(k) + struct.pack("<If", 6, v))  # noqa: E731
    text = lambda k, v: kv.append(s(k) + struct.pack("<I", 8) + s(v))  # noqa: E731
    texts = lambda k, vs: kv.append(s(k) + struct.pack("<IIQ", 9, 8, len(vs)) + b"".join(map(s, vs)))  # noqa: E731
    i32s = lambda k, vs: kv.append(s(k) + struct.pack(f"<IIQ{len(vs)}i", 9, 5, len(vs), *vs))  # noqa: E731
    text("general.architecture", "llama")
    text("general.name", "tiny")
    u32("llama.context_length", cfg.max_position_embeddings)
    u32("llama.embedding_length", cfg.hidden_size)
    u32("llama.block_count", cfg.num_hidden_layers)
    u32("llama.feed_forward_length", cfg.intermediate_size)
    u32("llama.attention.head_count", n_head)
    u32("llama.attention.head_count_kv", n_kv)
    u32("llama.rope.dimension_count", cfg.hidden_size // n_head)
    u32("llama.vocab_size", cfg.vocab_size)
    f32("llama.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
    f32("llama.rope.freq_base", 10000.0)
    vocab = bpe.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    text("tokenizer.ggml.model", "gpt2")
    texts("tokenizer.ggml.tokens", tokens)
    i32s("tokenizer.ggml.token_type", [3 if t == "<|endoftext|>" else 1 for t in tokens])
    texts("tokenizer.ggml.merges", [" ".join(m) if isinstance(m, list) else m for m in json.loads(bpe.to_str())["model"]["merges"]])
    u32("tokenizer.ggml.bos_token_id", vocab["<|endoftext|>"])
    u32("tokenizer.ggml.eos_token_id", vocab["<|endoftext|>"])

    def permute(w, heads):  # llama.cpp stores q and k rows interleaved for its rope
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    infos, blobs, offset = [], [], 0
    for name, t in model.state_dict().items():
        a = t.detach().float().numpy()
        a = permute(a, n_head) if "q_proj" in name else permute(a, n_kv) if "k_proj" in name else a
        stem = name.removesuffix(".weight")
        layer = stem.split(".")[2] if stem.startswith("model.layers.") else None
        gname = f"blk.{layer}.{GGUF_NAMES[stem.split('.', 3)[3]]}" if layer else GGUF_NAMES[stem]
        infos.append(s(gname + ".weight") + struct.pack(f"<I{a.ndim}QIQ", a.ndim, *reversed(a.shape), 0, offset))
        data = np.ascontiguousarray(a, dtype="<f4").tobytes()
        pad = -len(data) % 32
        blobs.append(data + b"\0" * pad)
        offset += len(data) + pad
    head = b"GGUF" + struct.pack("<IQQ", 3, len(infos), len(kv)) + b"".join(kv) + b"".join(infos)
    path.write_bytes(head + b"\0" * (-len(head) % 32) + b"".join(blobs))


@pytest.fixture(scope="module")
def gguf_run(tmp_path_factory):
    bpe = bpe_tokenizer()
    run = tmp_path_factory.mktemp("gguf") / "g"
    run.mkdir()
    made = {}
    for step in (100, 200):
        made[step] = tiny_model(bpe.get_vocab_size(), step)
        write_gguf(run / f"tiny-step{step}.F32.gguf", made[step], bpe)
    return run, made, bpe


# -- sharded safetensors -------------------------------------------------------------------


@pytest.fixture
def sharded_run(tmp_path, tok):
    """Two checkpoints saved as transformers' Trainer saves a large model: safetensors shards and an index."""
    run = tmp_path / "sharded"
    made = {}
    for step in (1, 2):
        made[step] = tiny_model(len(tok), step)
        made[step].save_pretrained(run / f"checkpoint-{step}", max_shard_size=10_000)
        tok.save_pretrained(run / f"checkpoint-{step}")
    return run, made


def shards(folder):
    return sorted(folder.glob("model-*-of-*.safetensors"))
