"""Finding the checkpoints of a finetuning run, and loading them.

A run directory holds any of:

    checkpoint-<step>/     Hugging Face Trainer checkpoints: a full model (config.json +
                           *.safetensors) or a LoRA adapter (adapter_config.json +
                           adapter_model.safetensors), or a single .gguf file
    config.json + weights  the final model, in the run directory itself (or a final adapter);
                           its step is trainer_state.json's global_step (in the run directory,
                           else in the last checkpoint), else the last checkpoint's step + 1,
                           else 0; dropped if a checkpoint folder has the same step
    *.gguf                 one checkpoint per file; its step from `step<N>` / `checkpoint-<N>`
                           in the name, else the last stand-alone number (quantization tags
                           like Q4_1 ignored), else the files' order by name

Only safetensors are loaded unless the caller allows pickle (.bin/.pt) weights. LoRA
adapters are loaded on their base model through peft and merged; GGUF files through
transformers' `gguf_file=` (dequantized; llama-family files need the `gguf` package).

find_checkpoints checks every checkpoint's weight files from their headers (safetensors
sizes, a sharded model's index, GGUF headers) so a broken file is named before any work.
Nothing here contacts a model hub unless options.allow_hub: every load is local files only,
and a LoRA base that is neither a local directory nor in the Hugging Face cache is refused
at once, naming the adapter_config.json it came from.

    checkpoints = find_checkpoints("runs/r1")
    model, tokenizer = load_model_and_tokenizer(checkpoints[-1], BackendOptions())
    model_dir = materialize(checkpoints[-1], cache_dir)   # a plain safetensors dir, for vLLM
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import uuid
from collections import Counter
from pathlib import Path

from filelock import FileLock

from premem.errors import InputError
from premem.sampling.backend import DTYPES, BackendOptions

log = logging.getLogger(__name__)

KINDS = ("full", "lora", "gguf")
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
_GGUF_STEP = re.compile(r"(?:step|checkpoint)[-_=]?(\d+)", re.IGNORECASE)
_QUANT_TAG = re.compile(r"(?<![A-Za-z0-9])(?:I?Q\d+(?:_[A-Za-z0-9]+)*|BF16|F16|F32|F64)(?![A-Za-z0-9])", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![A-Za-z0-9])(\d+)(?![A-Za-z0-9])")
# Trainer state saved beside the weights; pickles too, but not weights
_TRAINER_FILES = {"training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    run: str  # run name (the run directory's name unless given)
    step: int  # training step
    path: Path  # directory holding the weights (for gguf: the directory holding the file)
    kind: str  # "full" | "lora" | "gguf"
    gguf_file: str | None = None  # gguf: the file's name inside path
    base_model: str | None = None  # lora: the base model (adapter_config.json's, unless overridden)

    @property
    def location(self) -> Path:
        """What to name in a message: the .gguf file, or the directory."""
        return self.path / self.gguf_file if self.gguf_file else self.path


# -- finding ---------------------------------------------------------------------------------


def find_checkpoints(
    run_dir: str | Path, run_name: str | None = None, base_model: str | None = None, *, allow_pickle: bool = False
) -> list[Checkpoint]:
    """Every checkpoint of the run in run_dir, sorted by step. Bad or empty runs raise InputError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run directory does not exist")
    run = run_name or run_dir.resolve().name
    found: list[Checkpoint] = []
    folders = sorted((int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT_DIR.match(p.name)))
    for step, folder in folders:
        c = _inspect(folder, run, step, base_model, allow_pickle)
        if c is None:
            raise InputError(
                f"{folder}: no model weights (expected config.json with *.safetensors, adapter_config.json with "
                "adapter_model.safetensors, or one .gguf file)"
            )
        found.append(c)
    final = _inspect(run_dir, run, 0, base_model, allow_pickle, gguf=False)
    if final is not None:
        step = _final_step(run_dir, folders)
        if any(c.step == step for c in found):
            log.info("%s: the final model has step %d, as checkpoint-%d has; keeping the checkpoint", run_dir, step, step)
        else:
            found.append(dataclasses.replace(final, step=step))
    found += _gguf_files(run_dir, run)
    if not found:
        raise InputError(
            f"{run_dir}: no checkpoints (expected checkpoint-<step>/ folders, a model folder, LoRA adapters or .gguf files)"
        )
    found.sort(key=lambda c: c.step)
    for a, b in zip(found, found[1:]):
        if a.step == b.step:
            raise InputError(f"{run_dir}: two checkpoints for step {a.step} ({a.location} and {b.location})")
    check_weight_files(found)
    return found


def _inspect(
    folder: Path, run: str, step: int, base_model: str | None, allow_pickle: bool, gguf: bool = True
) -> Checkpoint | None:
    """The checkpoint a folder holds (None if it holds none); refuses pickle-only weights."""
    names = {p.name for p in folder.iterdir() if p.is_file()}
    pickles = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth")) and not _trainer_file(n))
    safetensors = sorted(n for n in names if n.endswith(".safetensors") and n != "adapter_model.safetensors")
    if "config.json" in names and (safetensors or [n for n in pickles if not n.startswith("adapter_model")]):
        kind = "full"
        weights = safetensors
    elif "adapter_config.json" in names and ("adapter_model.safetensors" in names or "adapter_model.bin" in pickles):
        kind = "lora"
        weights = ["adapter_model.safetensors"] if "adapter_model.safetensors" in names else []
        base_model = base_model or _adapter_base(folder)
    elif gguf and (ggufs := sorted(n for n in names if n.endswith(".gguf"))):
        if len(ggufs) > 1:
            raise InputError(f"{folder}: {len(ggufs)} .gguf files ({', '.join(ggufs)}); a checkpoint folder holds one")
        return Checkpoint(run, step, folder, "gguf", gguf_file=ggufs[0])
    else:
        return None
    if not weights and not allow_pickle:
        raise InputError(
            f"{folder}: only pickle weights ({pickles[0]}); premem loads safetensors only — pass --allow-pickle if you "
            "trust this file"
        )
    return Checkpoint(run, step, folder, kind, base_model=base_model if kind == "lora" else None)


def _trainer_file(name: str) -> bool:
    return name in _TRAINER_FILES or name.startswith("rng_state")


def _adapter_base(folder: Path) -> str | None:
    path = folder / "adapter_config.json"
    try:
        return json.loads(path.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable adapter config ({e})") from None


def _final_step(run_dir: Path, folders: list[tuple[int, Path]]) -> int:
    for folder in [run_dir] + ([folders[-1][1]] if folders else []):
        path = folder / "trainer_state.json"
        if path.is_file():
            try:
                return int(json.loads(path.read_text())["global_step"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise InputError(f"{path}: no global_step in this trainer state ({e})") from None
    return folders[-1][0] + 1 if folders else 0


def _gguf_files(run_dir: Path, run: str) -> list[Checkpoint]:
    files = sorted(p.name for p in run_dir.glob("*.gguf") if p.is_file())
    out = []
    for order, name in enumerate(files):
        stem = name[: -len(".gguf")]
        m = _GGUF_STEP.search(stem)
        numbers = _NUMBER.findall(_QUANT_TAG.sub("", stem))
        step = int(m.group(1)) if m else int(numbers[-1]) if numbers else order
        out.append(Checkpoint(run, step, run_dir, "gguf", gguf_file=name))
    return out


# -- checking the weight files --------------------------------------------------------------
# A truncated or empty weight file would otherwise show only when an actor loads it: a long
# remote traceback naming neither checkpoint nor file, after the earlier checkpoints were
# scored. So every checkpoint's files are checked when the run is found, from their headers
# alone (no tensor is read: milliseconds for a run of many checkpoints).

_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def check_weight_files(checkpoints: list[Checkpoint]) -> None:
    """InputError naming the file if a checkpoint's weights (or its local LoRA base's) are broken."""
    folders = []
    for c in checkpoints:
        if c.kind == "gguf":
            _check_gguf(c.location)
            continue
        folders.append(c.path)
        if c.kind == "lora" and c.base_model and Path(c.base_model).is_dir():
            folders.append(Path(c.base_model))
    for folder in dict.fromkeys(folders):  # a shared base model once
        _check_weight_folder(folder)


def _check_weight_folder(folder: Path) -> None:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    held = {p.name: _safetensors_keys(p) for p in files if p.name.endswith(".safetensors")}
    for p in files:
        if p.name.endswith((".bin", ".pt", ".pth")) and not _trainer_file(p.name) and p.stat().st_size == 0:
            raise InputError(f"{p}: empty file (0 bytes); the checkpoint was not fully written")
    for name in _INDEXES:
        if (folder / name).is_file():
            _check_index(folder / name, held)


def _check_index(path: Path, held: dict[str, set[str]]) -> None:
    """A sharded checkpoint's index: valid, every shard it names present and holding its tensors."""
    try:
        weight_map = json.loads(path.read_text()).get("weight_map")
    except (OSError, ValueError, AttributeError) as e:
        raise InputError(f"{path}: not a readable weight index ({e})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise InputError(f"{path}: not a weight index (expected a weight_map from tensor names to file names)")
    for name, count in Counter(weight_map.values()).items():
        if not (path.parent / name).is_file():
            raise InputError(f"{path}: names {name}, which is missing ({count} of the model's tensors are in it)")
    for tensor, name in weight_map.items():
        if name in held and tensor not in held[name]:
            raise InputError(f"{path}: maps {tensor} to {name}, which does not hold it")


def _safetensors_keys(path: Path) -> set[str]:
    """The tensor names in a safetensors file, from its header; InputError if the file is broken."""
    from safetensors import SafetensorError, safe_open

    try:  # safe_open checks the header and that the file is exactly as long as it says
        with safe_open(str(path), framework="numpy") as f:
            return set(f.keys())
    except (SafetensorError, OSError) as e:
        raise InputError(f"{path}: {_safetensors_problem(path, e)}") from None


def _safetensors_problem(path: Path, error: Exception) -> str:
    """What is wrong with a safetensors file safe_open refused, in words a user can act on."""
    size = path.stat().st_size
    if size == 0:
        return "empty file (0 bytes); the checkpoint was not fully written"
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little") if size >= 8 else None
        try:
            header = json.loads(f.read(n)) if n is not None and 8 + n <= size else None
            expected = 8 + n + max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            expected = None
    if n is not None and 8 + n > size and n < 2**27:  # a plausible header length the file cannot hold
        return f"truncated: {size:,} bytes, shorter than its own header ({8 + n:,}); the checkpoint was not fully written"
    if expected is not None and expected > size:
        return f"truncated: {size:,} bytes where its header says {expected:,}; the checkpoint was not fully written"
    if expected is not None and expected < size:
        return f"{size:,} bytes where its header says {expected:,}: not a valid safetensors file"
    return f"not a readable safetensors file ({error})"


def _check_gguf(path: Path) -> None:
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    if not _has("gguf"):  # loading needs gguf, and says so; here the magic number at least
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise InputError(f"{path}: not a GGUF file (it does not start with GGUF)")
        return
    from gguf import GGUFReader

    try:  # reads the header and tensor table and maps each tensor's data: a cut file fails here
        GGUFReader(path)
    except (ValueError, TypeError, KeyError, IndexError, OSError, struct.error) as e:
        raise InputError(f"{path}: not a readable GGUF file, cut short or corrupt ({e})") from None


# -- loading ---------------------------------------------------------------------------------


def load_model_and_tokenizer(checkpoint: Checkpoint, options: BackendOptions):
    """The checkpoint's model (eval mode, on options.device) and its tokenizer."""
    device = resolve_device(options.device)
    model = _load_model(checkpoint, options, options.dtype)
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
    if _CHECKPOINT_DIR.match(checkpoint.path.name):
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
    origin = f"{config}: its base_model_name_or_path" if base == _adapter_base(checkpoint.path) else "base_model:"
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


def _load_model(checkpoint: Checkpoint, options: BackendOptions, dtype: str, dequantize: bool = False):
    """The model as transformers returns it (on the CPU), a LoRA adapter merged into its base."""
    from transformers import AutoModelForCausalLM

    if checkpoint.kind not in KINDS:
        raise InputError(f"{checkpoint.location}: unknown checkpoint kind {checkpoint.kind!r}")
    kwargs = {
        "dtype": _torch_dtype(dtype),
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
        _inspect(checkpoint.path, checkpoint.run, checkpoint.step, None, options.allow_pickle)  # pickle check
        return _from_pretrained(AutoModelForCausalLM, checkpoint.path, kwargs)
    if not _has("peft"):
        raise InputError(f"{checkpoint.path}: a LoRA adapter; loading it needs peft (pip install peft)")
    base_source = base_model_source(checkpoint, options)
    _inspect(checkpoint.path, checkpoint.run, checkpoint.step, checkpoint.base_model, options.allow_pickle)
    if Path(base_source).is_dir():
        _inspect(Path(base_source), checkpoint.run, 0, None, options.allow_pickle, gguf=False)
    from peft import PeftModel

    base = _from_pretrained(AutoModelForCausalLM, base_source, kwargs, what="the LoRA base model")
    try:
        model = PeftModel.from_pretrained(base, str(checkpoint.path), **hub_kwargs(options))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise InputError(f"{checkpoint.path}: cannot load the LoRA adapter on {checkpoint.base_model} ({e})") from None
    return model.merge_and_unload()  # a plain model: faster to run, and the same one vLLM gets


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

    model = _load_model(checkpoint, options, "auto", dequantize=True)
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
