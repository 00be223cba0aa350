"""Finding and loading checkpoints: Trainer runs, final models, LoRA adapters, GGUF files.

Every model is a tiny Llama built here (hidden 32, one layer) with a word-level tokenizer
built here too: no hub. GGUF files are written by a small GGUF v3 writer below (f32
tensors), so only loading them needs the `gguf` package; LoRA tests need peft.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from premem.errors import InputError
from premem.sampling import checkpoints as ck
from premem.sampling.backend import BackendOptions
from premem.sampling.checkpoints import (
    Checkpoint,
    check_same_tokenizer,
    find_checkpoints,
    load_config,
    load_model_and_tokenizer,
    load_tokenizer,
    materialize,
    tokenizer_fingerprint,
)

HAS_PEFT = importlib.util.find_spec("peft") is not None
HAS_GGUF = importlib.util.find_spec("gguf") is not None
needs_peft = pytest.mark.skipif(not HAS_PEFT, reason="peft is not installed")
needs_gguf = pytest.mark.skipif(not HAS_GGUF, reason="gguf is not installed")
CPU = BackendOptions(device="cpu")
WORDS = "the cat sat on a mat and answer question done 0 1 2 3 4 5 6 7 8 9".split()
PROBE = torch.tensor([[1, 4, 5, 6, 7, 2]])


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


# -- discovery -------------------------------------------------------------------------------


def test_a_trainer_run_is_found_in_step_order(trainer_run):
    run, _ = trainer_run
    got = find_checkpoints(run)
    assert [(c.run, c.step, c.path, c.kind) for c in got] == [
        ("r1", 10, run / "checkpoint-10", "full"),
        ("r1", 20, run / "checkpoint-20", "full"),
        ("r1", 25, run, "full"),
    ]
    assert {c.run for c in find_checkpoints(str(run), run_name="lr=1e-5")} == {"lr=1e-5"}


def test_the_final_model_step(tmp_path, tok):
    m = tiny_model(len(tok))
    # no trainer_state.json in the run dir: the last checkpoint's global_step; same step -> the checkpoint is kept
    a = tmp_path / "a"
    save(m, a / "checkpoint-5", tok, global_step=5)
    save(m, a / "checkpoint-20", tok, global_step=20)
    save(m, a, tok)
    assert [(c.step, c.path.name) for c in find_checkpoints(a)] == [(5, "checkpoint-5"), (20, "checkpoint-20")]
    # no trainer state anywhere: the last checkpoint's step + 1
    b = tmp_path / "b"
    save(m, b / "checkpoint-7", tok)
    save(m, b, tok)
    assert [c.step for c in find_checkpoints(b)] == [7, 8]
    # a plain model folder: one checkpoint, step 0
    c = save(m, tmp_path / "c", tok)
    assert [(x.step, x.path, x.kind) for x in find_checkpoints(c)] == [(0, c, "full")]


# a GGUF v3 file holding no tensors and no metadata: a readable header, all discovery needs
EMPTY_GGUF = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)


def test_gguf_steps_from_their_names(tmp_path):
    for name in ("r-step30.gguf", "model-checkpoint-40.gguf", "final-50.Q4_1.gguf", "z_60.F16.gguf"):
        (tmp_path / name).write_bytes(EMPTY_GGUF)
    got = find_checkpoints(tmp_path, run_name="g")
    assert [(c.step, c.gguf_file, c.kind, c.path) for c in got] == [
        (30, "r-step30.gguf", "gguf", tmp_path),
        (40, "model-checkpoint-40.gguf", "gguf", tmp_path),
        (50, "final-50.Q4_1.gguf", "gguf", tmp_path),
        (60, "z_60.F16.gguf", "gguf", tmp_path),
    ]
    assert got[0].location == tmp_path / "r-step30.gguf"
    other = tmp_path / "other"
    other.mkdir()
    for name in ("SmolLM2-135M-Instruct.Q4_1.gguf", "zeta.gguf"):  # no stand-alone number: their order
        (other / name).write_bytes(EMPTY_GGUF)
    assert [(c.step, c.gguf_file) for c in find_checkpoints(other)] == [(0, "SmolLM2-135M-Instruct.Q4_1.gguf"), (1, "zeta.gguf")]


def test_a_gguf_file_in_a_checkpoint_folder(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "model.Q8_0.gguf").write_bytes(EMPTY_GGUF)
    [c] = find_checkpoints(tmp_path)
    assert (c.step, c.kind, c.path, c.gguf_file) == (3, "gguf", tmp_path / "checkpoint-3", "model.Q8_0.gguf")


def _files(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"{}")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, r"{d}: no checkpoints \(expected checkpoint-<step>/ folders, a model folder, LoRA adapters or \.gguf files\)"),
        (lambda d: (d / "checkpoint-1").mkdir(), r"{d}/checkpoint-1: no model weights"),
        (lambda d: _files(d, "a-step10.gguf", "b-step10.gguf"), r"{d}: two checkpoints for step 10 \({d}/a-step10\.gguf and {d}/b-step10\.gguf\)"),
        (lambda d: _files(d / "checkpoint-2", "x.gguf", "y.gguf"), r"{d}/checkpoint-2: 2 \.gguf files \(x\.gguf, y\.gguf\)"),
        (lambda d: _files(d, "trainer_state.json", "config.json", "model.safetensors"), r"{d}/trainer_state.json: no global_step"),
    ],
)
def test_bad_run_directories(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(InputError, match=message.format(d=tmp_path)) as e:
        find_checkpoints(tmp_path)
    assert "\n" not in str(e.value)


def test_a_missing_run_directory(tmp_path):
    with pytest.raises(InputError, match=f"{tmp_path}/nope: run directory does not exist"):
        find_checkpoints(tmp_path / "nope")


def test_pickle_only_weights_are_refused_unless_allowed(tmp_path, tok):
    m = tiny_model(len(tok))
    folder = tmp_path / "run" / "checkpoint-4"
    folder.mkdir(parents=True)
    m.config.save_pretrained(folder)
    tok.save_pretrained(folder)
    torch.save(m.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(InputError) as e:
        find_checkpoints(tmp_path / "run")
    assert str(e.value) == (
        f"{folder}: only pickle weights (pytorch_model.bin); premem loads safetensors only — pass --allow-pickle if you trust this file"
    )
    [c] = find_checkpoints(tmp_path / "run", allow_pickle=True)
    with pytest.raises(InputError, match="only pickle weights"):
        load_model_and_tokenizer(c, CPU)
    model, _ = load_model_and_tokenizer(c, BackendOptions(device="cpu", allow_pickle=True))
    torch.testing.assert_close(logits(model), logits(m))


# -- loading ---------------------------------------------------------------------------------


def test_full_checkpoints_load_with_their_tokenizer(trainer_run, tok):
    run, models_ = trainer_run
    for c in find_checkpoints(run):
        model, tokenizer = load_model_and_tokenizer(c, CPU)
        assert not model.training and model.device.type == "cpu" and model.dtype == torch.float32
        torch.testing.assert_close(logits(model), logits(models_[c.step]))
        assert tokenizer("the cat sat")["input_ids"] == tok("the cat sat")["input_ids"]  # checkpoint-20: the run's
    model, _ = load_model_and_tokenizer(find_checkpoints(run)[0], BackendOptions(device="auto", dtype="bfloat16"))
    assert model.dtype == torch.bfloat16
    assert load_config(find_checkpoints(run)[0]).max_position_embeddings == 64


def test_bad_options_are_input_errors(trainer_run):
    c = find_checkpoints(trainer_run[0])[0]
    with pytest.raises(InputError, match="dtype: expected one of"):
        load_model_and_tokenizer(c, BackendOptions(dtype="float8"))
    with pytest.raises(InputError, match="device: expected auto, cpu or cuda"):
        load_model_and_tokenizer(c, BackendOptions(device="gpu0"))


def test_materialize_a_full_checkpoint_is_its_own_folder(trainer_run, tmp_path):
    c = find_checkpoints(trainer_run[0])[0]
    assert materialize(c, tmp_path / "cache") == c.path
    assert not (tmp_path / "cache").exists()


def test_tokenizer_fingerprints_and_a_mismatched_tokenizer(tmp_path, tok):
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(word_tokenizer())
    odd = word_tokenizer(extra=("dog",))
    assert tokenizer_fingerprint(odd) != tokenizer_fingerprint(tok)
    other_pad = word_tokenizer()
    other_pad.pad_token = "</s>"
    assert tokenizer_fingerprint(other_pad) != tokenizer_fingerprint(tok)
    run = tmp_path / "mixed"
    for step, t in ((1, tok), (2, odd), (3, tok)):
        save(tiny_model(len(odd)), run / f"checkpoint-{step}", t)
    found = find_checkpoints(run)
    tokenizers = [load_tokenizer(c) for c in found]
    with pytest.raises(InputError) as e:
        check_same_tokenizer(found, tokenizers)
    msg = str(e.value)
    assert msg.startswith(f"{run}/checkpoint-2: its tokenizer differs from the rest of run mixed (25 tokens")
    assert msg.endswith("all checkpoints of a run must share one tokenizer") and "\n" not in msg
    check_same_tokenizer(found[::2], tokenizers[::2])  # the same tokenizer: fine


# -- LoRA ------------------------------------------------------------------------------------


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


@needs_peft
def test_lora_checkpoints_load_merged_on_their_base(lora_run, tok):
    root, expected = lora_run
    found = find_checkpoints(root / "run")
    assert [(c.step, c.kind, c.base_model) for c in found] == [(5, "lora", str(root / "base")), (9, "lora", str(root / "base"))]
    for c in found:
        model, tokenizer = load_model_and_tokenizer(c, CPU)  # no tokenizer with the adapter: the base model's
        assert type(model).__name__ == "LlamaForCausalLM" and not model.training
        torch.testing.assert_close(logits(model), expected[c.step])
        assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(tok)
        assert load_config(c).hidden_size == 32
    moved = root / "moved_base"
    if not moved.exists():
        save(tiny_model(len(tok), 7), moved, tok)
    assert {c.base_model for c in find_checkpoints(root / "run", base_model=str(moved))} == {str(moved)}


@needs_peft
def test_lora_materialize_merges_once(lora_run, tmp_path):
    root, expected = lora_run
    c = find_checkpoints(root / "run")[0]
    out = materialize(c, tmp_path / "cache")
    assert out.parent == tmp_path / "cache" and out.name.startswith("run.step=5.lora.")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()
    torch.testing.assert_close(logits(plain), expected[5])
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert materialize(c, tmp_path / "cache") == out  # reused
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")] == []


def test_lora_without_peft_is_an_input_error(monkeypatch, tmp_path):
    monkeypatch.setattr(ck, "_has", lambda package: package != "peft")
    c = Checkpoint("r", 1, tmp_path, "lora", base_model=str(tmp_path))
    with pytest.raises(InputError, match=r"a LoRA adapter; loading it needs peft \(pip install peft\)"):
        load_model_and_tokenizer(c, CPU)


def test_a_lora_adapter_with_pickle_weights_only(tmp_path):
    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "base"}))
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04N.")  # a pickle: never loaded here
    with pytest.raises(InputError, match=r"checkpoint-2: only pickle weights \(adapter_model.bin\)"):
        find_checkpoints(tmp_path)
    [c] = find_checkpoints(tmp_path, allow_pickle=True)
    assert (c.kind, c.base_model) == ("lora", "base")


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


@needs_gguf
def test_gguf_checkpoints_load_with_their_own_tokenizer(gguf_run):
    run, made, bpe = gguf_run
    found = find_checkpoints(run)
    assert [(c.step, c.gguf_file) for c in found] == [(100, "tiny-step100.F32.gguf"), (200, "tiny-step200.F32.gguf")]
    for c in found:
        model, tokenizer = load_model_and_tokenizer(c, CPU)
        assert not model.training
        torch.testing.assert_close(logits(model), logits(made[c.step]))
        assert tokenizer("the cat sat")["input_ids"] == bpe.encode("the cat sat").ids
        assert load_config(c).max_position_embeddings == 64
    check_same_tokenizer(found, [load_tokenizer(c) for c in found])


@needs_gguf
def test_gguf_materialize_writes_a_plain_safetensors_model(gguf_run, tmp_path):
    run, made, _ = gguf_run
    c = find_checkpoints(run)[1]
    out = materialize(c, tmp_path)
    assert out.name.startswith("g.step=200.gguf.") and (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    plain = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()
    torch.testing.assert_close(logits(plain), logits(made[200]))
    assert materialize(c, tmp_path) == out


def test_gguf_without_the_gguf_package_is_an_input_error(gguf_run, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` fails, as when it is not installed
    monkeypatch.setattr(ck, "_has", lambda package: package != "gguf")
    c = find_checkpoints(gguf_run[0])[0]
    with pytest.raises(InputError, match=r"tiny-step100\.F32\.gguf: loading a GGUF file needs the gguf package: pip install gguf"):
        load_model_and_tokenizer(c, CPU)


# -- broken weight files: named when the run is found, before any work ------------------------


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


def test_a_sharded_checkpoint_is_found_and_loads(sharded_run):
    run, made = sharded_run
    assert len(shards(run / "checkpoint-2")) >= 3 and (run / "checkpoint-2" / "model.safetensors.index.json").is_file()
    for c in find_checkpoints(run):
        model, _ = load_model_and_tokenizer(c, CPU)
        torch.testing.assert_close(logits(model), logits(made[c.step]))


def _cut(path, size):
    os.truncate(path, size)


def _swap_two_tensors(index):
    doc = json.loads(index.read_text())
    names = list(doc["weight_map"])
    a, b = next((a, b) for a in names for b in names if doc["weight_map"][a] != doc["weight_map"][b])
    doc["weight_map"][a], doc["weight_map"][b] = doc["weight_map"][b], doc["weight_map"][a]
    index.write_text(json.dumps(doc))
    return a, doc["weight_map"][a]


@pytest.mark.parametrize("breakage", ["truncated", "cut in its header", "empty", "longer", "garbage", "missing",
                                      "index not json", "index without weight_map", "index maps a tensor elsewhere"])
def test_a_broken_shard_or_index_is_named_before_any_work(sharded_run, breakage):
    run, _ = sharded_run
    folder = run / "checkpoint-2"  # checkpoint-1 is intact: the check is not the first load's
    shard, index = shards(folder)[1], folder / "model.safetensors.index.json"
    size = shard.stat().st_size
    if breakage == "truncated":
        _cut(shard, size // 2)
        expected = f"{shard}: truncated: {size // 2:,} bytes where its header says {size:,}; the checkpoint was not fully written"
    elif breakage == "cut in its header":
        _cut(shard, 20)
        header = 8 + int.from_bytes(shard.read_bytes()[:8], "little")
        expected = f"{shard}: truncated: 20 bytes, shorter than its own header ({header:,}); the checkpoint was not fully written"
    elif breakage == "empty":
        _cut(shard, 0)
        expected = f"{shard}: empty file (0 bytes); the checkpoint was not fully written"
    elif breakage == "longer":
        with shard.open("ab") as f:
            f.write(b"\0" * 8)
        expected = f"{shard}: {size + 8:,} bytes where its header says {size:,}: not a valid safetensors file"
    elif breakage == "garbage":
        shard.write_bytes(b"\xff" * size)
        expected = f"{shard}: not a readable safetensors file (Error while deserializing header: header too large)"
    elif breakage == "missing":
        held = sum(1 for f in json.loads(index.read_text())["weight_map"].values() if f == shard.name)
        shard.unlink()
        expected = f"{index}: names {shard.name}, which is missing ({held} of the model's tensors are in it)"
    elif breakage == "index not json":
        index.write_text(index.read_text()[:50])
        expected = f"{index}: not a readable weight index ("
    elif breakage == "index without weight_map":
        index.write_text(json.dumps({"metadata": {}}))
        expected = f"{index}: not a weight index (expected a weight_map from tensor names to file names)"
    else:
        tensor, file = _swap_two_tensors(index)
        expected = f"{index}: maps {tensor} to {file}, which does not hold it"
    with pytest.raises(InputError) as e:
        find_checkpoints(run)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)


@needs_peft
def test_a_broken_lora_adapter_or_base_is_named(lora_run, tmp_path):
    root, _ = lora_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    adapter = run / "checkpoint-9" / "adapter_model.safetensors"
    _cut(adapter, adapter.stat().st_size - 1)
    with pytest.raises(InputError, match=rf"^{adapter}: truncated: [\d,]+ bytes where its header says [\d,]+;"):
        find_checkpoints(run)
    _cut(adapter, 0)
    with pytest.raises(InputError, match=rf"^{adapter}: empty file \(0 bytes\)"):
        find_checkpoints(run)
    shutil.rmtree(run / "checkpoint-9")
    base = tmp_path / "base"  # the base every checkpoint is loaded on: checked too
    shutil.copytree(root / "base", base)
    _cut(base / "model.safetensors", 100)
    with pytest.raises(InputError, match=rf"^{base}/model.safetensors: truncated: 100 bytes"):
        find_checkpoints(run, base_model=str(base))


def test_broken_gguf_files_are_named(tmp_path, gguf_run, monkeypatch):
    run, _, _ = gguf_run
    (tmp_path / "a-step1.gguf").write_bytes(b"")
    with pytest.raises(InputError, match=rf"^{tmp_path}/a-step1.gguf: empty file \(0 bytes\)$"):
        find_checkpoints(tmp_path)
    (tmp_path / "a-step1.gguf").write_bytes(b"not a gguf file")
    monkeypatch.setattr(ck, "_has", lambda package: package != "gguf")  # without gguf: the magic number at least
    with pytest.raises(InputError, match=r"a-step1.gguf: not a GGUF file \(it does not start with GGUF\)$"):
        find_checkpoints(tmp_path)


@needs_gguf
def test_a_truncated_gguf_file_is_named(tmp_path, gguf_run):
    run, _, _ = gguf_run
    good = run / "tiny-step100.F32.gguf"
    cut = tmp_path / good.name
    cut.write_bytes(good.read_bytes()[: good.stat().st_size - 64])
    with pytest.raises(InputError, match=rf"^{cut}: not a readable GGUF file, cut short or corrupt \("):
        find_checkpoints(tmp_path)


def test_pickle_weights_are_checked_for_emptiness_only(tmp_path, tok):
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    tiny_model(len(tok)).config.save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(InputError, match=rf"^{folder}/pytorch_model.bin: empty file \(0 bytes\)"):
        find_checkpoints(tmp_path, allow_pickle=True)


# -- the model hub: never contacted unless options.allow_hub ------------------------------------


def _adapter_naming(lora_run, tmp_path, base: str):
    """A copy of the LoRA run's checkpoint-5 whose adapter_config.json names `base`."""
    root, _ = lora_run
    folder = tmp_path / "run" / "checkpoint-5"
    shutil.copytree(root / "run" / "checkpoint-5", folder)
    config = folder / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": base}))
    return folder.parent, config


@needs_peft
@pytest.mark.parametrize("base", ["some/model", "../base", "/no/such/base"])
def test_a_lora_base_that_is_not_here_fails_at_once_naming_the_adapter_config(lora_run, tmp_path, base):
    root, expected = lora_run
    run, config = _adapter_naming(lora_run, tmp_path, base)
    [c] = find_checkpoints(run)  # found; loading says whether the hub may be used
    message = (
        f"{config}: its base_model_name_or_path {base!r} is not a local directory (nor a model in the Hugging Face "
        "cache); pass base_model=DIR naming the base model's directory (premem downloads from the model hub only "
        "with options.allow_hub=true)"
    )
    loads = {
        "tokenizer": lambda: load_tokenizer(c, CPU),
        "config": lambda: load_config(c, CPU),
        "model": lambda: load_model_and_tokenizer(c, CPU),
        "materialize": lambda: materialize(c, tmp_path / "cache", CPU),
    }
    for what, load in loads.items():
        start = time.perf_counter()
        with pytest.raises(InputError) as e:
            load()
        assert (what, str(e.value)) == (what, message)
        assert time.perf_counter() - start < 2, what  # no minute of hub retries
    [c] = find_checkpoints(run, base_model=str(root / "base"))  # the override the message names
    model, _ = load_model_and_tokenizer(c, CPU)
    torch.testing.assert_close(logits(model), expected[5])
    [c] = find_checkpoints(run, base_model="elsewhere/base")
    with pytest.raises(InputError, match=r"^base_model: 'elsewhere/base' is not a local directory"):
        load_config(c, CPU)


HUB_PROBE = """
import http.server, json, os, sys, threading

hits = []  # a stand-in for huggingface.co: every request premem sends to the hub lands here
class Hub(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        hits.append(self.path)
        self.send_response(404)
        self.end_headers()
    do_HEAD = do_GET
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
threading.Thread(target=server.serve_forever, daemon=True).start()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{server.server_address[1]}"  # read when huggingface_hub is imported

from premem.errors import InputError
from premem.sampling.backend import BackendOptions
from premem.sampling.checkpoints import find_checkpoints, load_config, load_model_and_tokenizer, load_tokenizer

run, base = sys.argv[1:]
out = {}
[c] = find_checkpoints(run)
for allow in (False, True):
    try:
        load_config(c, BackendOptions(device="cpu", allow_hub=allow))
    except InputError:
        pass
    out[f"bad base, allow_hub={allow}"] = len(hits)
[c] = find_checkpoints(run, base_model=base)
load_model_and_tokenizer(c, BackendOptions(device="cpu"))
load_tokenizer(c)
out["local base, model loaded"] = len(hits) - out["bad base, allow_hub=True"]
print(json.dumps(out))
"""


@needs_peft
@pytest.mark.slow
def test_no_request_reaches_the_hub_unless_allowed(lora_run, tmp_path):
    """A real process with the hub pointed at a local server: premem sends it nothing by default."""
    root, _ = lora_run
    run, _ = _adapter_naming(lora_run, tmp_path, "some/model")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    done = subprocess.run([sys.executable, "-c", HUB_PROBE, str(run), str(root / "base")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    requests = json.loads(done.stdout.strip().splitlines()[-1])
    assert requests["bad base, allow_hub=False"] == 0 and requests["local base, model loaded"] == 0
    assert requests["bad base, allow_hub=True"] > 0  # the stand-in does see the hub's requests when allowed
