"""Loading what a run holds: full checkpoints with their tokenizer, LoRA adapters merged on their base,
GGUF files dequantized, sharded safetensors; plain copies for engines (materialize); tokenizer
fingerprints; and the model hub never contacted unless allowed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from premem import models as md
from premem.errors import InputError
from premem.execution import BackendOptions
from premem.models import (
    check_same_tokenizer,
    load_config,
    load_model_and_tokenizer,
    load_tokenizer,
    local_model,
    materialize,
    tokenizer_fingerprint,
)
from premem.runs import Checkpoint, find_checkpoints
from tests.model_files import (  # noqa: F401 (fixtures)
    CPU,
    gguf_run,
    logits,
    lora_run,
    needs_gguf,
    needs_peft,
    pickle_run,
    save,
    sharded_run,
    shards,
    tiny_model,
    tok,
    trainer_run,
    word_tokenizer,
)


def test_pickle_weights_load_only_when_allowed(tmp_path, tok):
    run, _, m = pickle_run(tmp_path, tok)
    [c] = find_checkpoints(run, allow_pickle=True)
    with pytest.raises(InputError, match="only pickle weights"):
        load_model_and_tokenizer(c, CPU)
    model, _ = load_model_and_tokenizer(c, BackendOptions(device="cpu", allow_pickle=True))
    torch.testing.assert_close(logits(model), logits(m))


def test_a_plain_model_directory_loads_as_a_checkpoint(trainer_run, tok):
    run, made = trainer_run
    c = local_model(run / "checkpoint-10")
    assert (c.run, c.step, c.kind) == ("checkpoint-10", 0, "full")
    model, tokenizer = load_model_and_tokenizer(c, CPU)
    torch.testing.assert_close(logits(model), logits(made[10]))
    # checkpoint-20 holds no tokenizer: the run directory's, as a Trainer run keeps it
    assert tokenizer_fingerprint(load_tokenizer(local_model(run / "checkpoint-20"))) == tokenizer_fingerprint(tok)


# -- full checkpoints ------------------------------------------------------------------------


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
    monkeypatch.setattr(md, "_has", lambda package: package != "peft")
    c = Checkpoint("r", 1, tmp_path, "lora", base_model=str(tmp_path))
    with pytest.raises(InputError, match=r"a LoRA adapter; loading it needs peft \(pip install peft\)"):
        load_model_and_tokenizer(c, CPU)


# -- GGUF ------------------------------------------------------------------------------------


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
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` fails, as when it is not installed
    monkeypatch.setattr(md, "_has", lambda package: package != "gguf")
    c = find_checkpoints(gguf_run[0])[0]
    with pytest.raises(InputError, match=r"tiny-step100\.F32\.gguf: loading a GGUF file needs the gguf package: pip install gguf"):
        load_model_and_tokenizer(c, CPU)


# -- sharded safetensors -------------------------------------------------------------------


def test_a_sharded_checkpoint_is_found_and_loads(sharded_run):
    run, made = sharded_run
    assert len(shards(run / "checkpoint-2")) >= 3 and (run / "checkpoint-2" / "model.safetensors.index.json").is_file()
    for c in find_checkpoints(run):
        model, _ = load_model_and_tokenizer(c, CPU)
        torch.testing.assert_close(logits(model), logits(made[c.step]))


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
from premem.execution import BackendOptions
from premem.models import load_config, load_model_and_tokenizer, load_tokenizer
from premem.runs import find_checkpoints

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
