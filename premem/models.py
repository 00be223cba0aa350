"""Loading what a run directory holds: models, tokenizers and configs, and plain copies for engines.

Only safetensors are loaded unless the caller allows pickle (.bin/.pt) weights. LoRA adapters
are loaded on their base model through peft and merged; GGUF files through transformers'
`gguf_file=` (dequantized; llama-family files need the `gguf` package). Nothing here contacts a
model hub unless options.allow_hub: every load is local files only, and a LoRA base that is
neither a local directory nor in the Hugging Face cache is refused at once, naming the
adapter_config.json it came from.

    checkpoints = find_checkpoints("runs/r1")                  # premem.runs
    model, tokenizer = load_model_and_tokenizer(checkpoints[-1], BackendOptions())
    model_dir = materialize(checkpoints[-1], cache_dir)        # a plain safetensors dir, for vLLM's fallback
    tokenizer = load_tokenizer(local_model("models/base"))    # a plain model directory
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import uuid
from collections import Counter
from pathlib import Path

from filelock import FileLock

from premem.errors import InputError
from premem.execution import DTYPES, BackendOptions
from premem.runs import CHECKPOINT_DIR, KINDS, Checkpoint, adapter_base, check_pickle

log = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def local_model(path: str | Path) -> Checkpoint:
    """A plain model directory (config.json + weights) as a checkpoint, to load it like one."""
    path = Path(path)
    return Checkpoint(path.name, 0, path, "full")


def load_model_and_tokenizer(checkpoint: Checkpoint, options: BackendOptions):
    """The checkpoint's model (eval mode, on options.device) and its tokenizer."""
    device = resolve_device(options.device)
    model = load_model(checkpoint, options)
    tokenizer = load_tokenizer(checkpoint, options)
    return model.to(device).eval(), tokenizer


def load_tokenizer(checkpoint: Checkpoint, options: BackendOptions | None = None):
    """The checkpoint's tokenizer: from its folder, else the run's, else the base model's, else the .gguf's."""
    # the base first, even where the adapter has its own tokenizer: a bad one fails before transformers loads
    base = base_model_source(checkpoint, options) if checkpoint.kind == "lora" else None
    from transformers import AutoTokenizer

    trust = bool(options and options.trust_remote_code)
    source = tokenizer_dir(checkpoint)
    kwargs = hub_kwargs(options)
    if source is None and checkpoint.kind == "gguf":
        source, kwargs["gguf_file"] = checkpoint.path, str(checkpoint.location.resolve())
    elif source is None and base:
        source = base  # not a local folder: a model in the Hugging Face cache
    if source is None:
        raise InputError(f"{checkpoint.location}: no tokenizer here, in the run directory or with the base model")
    try:
        return AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust, **kwargs)
    except ImportError as e:
        raise _missing_gguf(checkpoint, e) from None
    except (OSError, ValueError) as e:
        raise InputError(f"{source}: cannot load the tokenizer ({e})") from None


def load_config(checkpoint: Checkpoint, options: BackendOptions | None = None):
    """The model's config (a LoRA adapter's: its base model's) without loading any weights."""
    from transformers import AutoConfig

    trust = bool(options and options.trust_remote_code)
    source, kwargs = checkpoint.path, hub_kwargs(options)
    if checkpoint.kind == "gguf":
        kwargs["gguf_file"] = str(checkpoint.location.resolve())
    elif checkpoint.kind == "lora":
        source = base_model_source(checkpoint, options)
    try:
        return AutoConfig.from_pretrained(str(source), trust_remote_code=trust, **kwargs)
    except ImportError as e:
        raise _missing_gguf(checkpoint, e) from None
    except (OSError, ValueError) as e:
        raise InputError(f"{checkpoint.location}: cannot read the model config ({e})") from None


def tokenizer_dir(checkpoint: Checkpoint) -> Path | None:
    """The directory whose tokenizer files the checkpoint uses (None: a .gguf's own tokenizer)."""
    candidates = [checkpoint.path]
    if CHECKPOINT_DIR.match(checkpoint.path.name):
        candidates.append(checkpoint.path.parent)
    if checkpoint.kind == "lora" and checkpoint.base_model:
        candidates.append(Path(checkpoint.base_model))
    for d in candidates:
        if any((d / name).is_file() for name in _TOKENIZER_FILES):
            return d
    return None


def hub_kwargs(options: BackendOptions | None) -> dict:
    """from_pretrained's keywords for the model hub: local files only unless the user opted in."""
    return {"local_files_only": not (options and options.allow_hub)}


def base_model_source(checkpoint: Checkpoint, options: BackendOptions | None = None) -> str:
    """A LoRA checkpoint's base model as from_pretrained takes it: a local directory, a model in the
    Hugging Face cache, or (only with options.allow_hub) a hub name. Otherwise transformers would
    retry the hub for a minute and fail with a message about the hub, not about this checkpoint."""
    base = checkpoint.base_model
    config = checkpoint.path / "adapter_config.json"
    if not base:
        raise InputError(f"{config}: names no base model (base_model_name_or_path); pass base_model=DIR")
    if Path(base).is_dir() or (options and options.allow_hub) or _in_hub_cache(base):
        return base
    origin = f"{config}: its base_model_name_or_path" if base == adapter_base(checkpoint.path) else "base_model:"
    raise InputError(
        f"{origin} {base!r} is not a local directory (nor a model in the Hugging Face cache); pass base_model=DIR "
        "naming the base model's directory (premem downloads from the model hub only with options.allow_hub=true)"
    )


def _in_hub_cache(name: str) -> bool:
    """Whether a hub model's config is in the local Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a hub id at all (HFValidationError): a path that does not exist
        return False


def resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"device: expected auto, cpu or cuda, got {device!r} ({e})") from None


def _torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise InputError(f"dtype: expected one of {', '.join(DTYPES)}, got {name!r}")
    return name if name == "auto" else getattr(torch, name)


def load_model(checkpoint: Checkpoint, options: BackendOptions, dtype: str | None = None, dequantize: bool = False):
    """The model as transformers returns it (on the CPU, in dtype: default options.dtype), a LoRA adapter
    merged into its base."""
    from transformers import AutoModelForCausalLM

    if checkpoint.kind not in KINDS:
        raise InputError(f"{checkpoint.location}: unknown checkpoint kind {checkpoint.kind!r}")
    kwargs = {
        "dtype": _torch_dtype(dtype or options.dtype),
        "trust_remote_code": options.trust_remote_code,
        # None lets transformers fall back to .bin weights; True refuses them
        "use_safetensors": None if options.allow_pickle else True,
        **hub_kwargs(options),
    }
    if checkpoint.kind == "gguf":
        from transformers import GgufConfig

        kwargs.pop("use_safetensors")
        kwargs["gguf_file"] = str(checkpoint.location.resolve())
        if dequantize:
            kwargs["quantization_config"] = GgufConfig(dequantize=True)
        try:
            return AutoModelForCausalLM.from_pretrained(str(checkpoint.path), **kwargs)
        except ImportError as e:
            raise _missing_gguf(checkpoint, e) from None
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"{checkpoint.location}: cannot load this GGUF file ({e})") from None
    if checkpoint.kind == "full":
        check_pickle(checkpoint.path, options.allow_pickle)  # found with allow_pickle, loaded without?
        return _from_pretrained(AutoModelForCausalLM, checkpoint.path, kwargs)
    if not _has("peft"):
        raise InputError(f"{checkpoint.path}: a LoRA adapter; loading it needs peft (pip install peft)")
    base_source = base_model_source(checkpoint, options)
    check_pickle(checkpoint.path, options.allow_pickle)
    if Path(base_source).is_dir():
        check_pickle(Path(base_source), options.allow_pickle)
    from peft import PeftModel

    base = _from_pretrained(AutoModelForCausalLM, base_source, kwargs, what="the LoRA base model")
    try:
        model = PeftModel.from_pretrained(base, str(checkpoint.path), **hub_kwargs(options))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise InputError(f"{checkpoint.path}: cannot load the LoRA adapter on {checkpoint.base_model} ({e})") from None
    return model.merge_and_unload()  # a plain model: faster to run (the HF backend scores adapters merged in memory)


def _from_pretrained(cls, path, kwargs, what: str = "the model"):
    try:
        return cls.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot load {what} ({e})") from None


def _has(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _missing_gguf(checkpoint: Checkpoint, e: ImportError) -> InputError:
    if not _has("gguf"):
        return InputError(f"{checkpoint.location}: loading a GGUF file needs the gguf package: pip install gguf")
    return InputError(f"{checkpoint.location}: cannot load this GGUF file ({e})")


# -- tokenizers ------------------------------------------------------------------------------


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the vocabulary and the special tokens: equal for tokenizers that encode alike."""
    special = {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    payload = json.dumps({"vocab": sorted(tokenizer.get_vocab().items()), "special": special}, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def check_same_tokenizer(checkpoints: list[Checkpoint], tokenizers: list) -> None:
    """All checkpoints of a run must share one tokenizer; InputError names the odd one out."""
    if len(checkpoints) != len(tokenizers):
        raise ValueError(f"{len(checkpoints)} checkpoints but {len(tokenizers)} tokenizers")
    prints = [tokenizer_fingerprint(t) for t in tokenizers]
    counts = Counter(prints)
    ref = max(prints, key=lambda p: (counts[p], -prints.index(p)))  # the most common; ties: the first's
    ref_i = prints.index(ref)
    for c, t, p in zip(checkpoints, tokenizers, prints):
        if p != ref:
            raise InputError(
                f"{c.location}: its tokenizer differs from the rest of run {c.run} ({len(t.get_vocab())} tokens, "
                f"fingerprint {p[:12]}…; {checkpoints[ref_i].location} has {len(tokenizers[ref_i].get_vocab())}, "
                f"{ref[:12]}…); all checkpoints of a run must share one tokenizer"
            )


# -- a plain model directory for engines that need one ---------------------------------------


def materialize(checkpoint: Checkpoint, cache_dir: str | Path, options: BackendOptions | None = None) -> Path:
    """A plain safetensors Hugging Face model directory holding the checkpoint's weights.

    vLLM serves LoRA adapters on their base model without this (premem.sampling.vllm_lora); it
    merges only an adapter vLLM refuses (modules_to_save, resized embeddings, ...), and GGUF files.
    full: its own directory. lora: the adapter merged into its base model; gguf: the model
    dequantized; both saved (with the tokenizer) once into cache_dir, under a name that
    changes when the source files do, and reused after. Written to a temporary directory
    and renamed into place, under a file lock: concurrent callers wait for one writer.
    """
    if checkpoint.kind == "full":
        return checkpoint.path
    options = options or BackendOptions()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / _cache_name(checkpoint)
    with FileLock(str(cache_dir / f".{target.name}.lock")):
        if (target / "config.json").is_file():
            return target
        for stale in cache_dir.glob(f".{target.name}.*.tmp"):  # left by a killed writer
            shutil.rmtree(stale, ignore_errors=True)
        tmp = cache_dir / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            _save_plain(checkpoint, options, tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s: materialized into %s", checkpoint.location, target)
    return target


def _save_plain(checkpoint: Checkpoint, options: BackendOptions, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = load_model(checkpoint, options, "auto", dequantize=True)
    if checkpoint.kind == "gguf":  # a GGUF-loaded model refuses to save: copy it into a plain one
        config = model.config
        config.__dict__.pop("quantization_config", None)
        plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
        plain.load_state_dict(model.state_dict())
        model = plain
    model.save_pretrained(str(out))
    load_tokenizer(checkpoint, options).save_pretrained(str(out))


def _cache_name(checkpoint: Checkpoint) -> str:
    """<run>.step=<step>.<kind>.<hash of the source files' names, sizes and times>."""
    sources = [checkpoint.location] if checkpoint.kind == "gguf" else [checkpoint.path]
    if checkpoint.base_model:
        sources.append(Path(checkpoint.base_model))
    h = hashlib.sha256()
    for src in sources:
        files = sorted(src.iterdir()) if src.is_dir() else [src]
        for f in files:
            if f.is_file():
                st = f.stat()
                h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        h.update(f"{src}\n".encode())
    run = re.sub(r"[^A-Za-z0-9._=-]", "_", checkpoint.run)
    return f"{run}.step={checkpoint.step}.{checkpoint.kind}.{h.hexdigest()[:16]}"
