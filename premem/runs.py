"""The run directory: what a finetuning run leaves, and how premem finds it.

A run directory holds any of:

    premem_run.json        what `premem train` trained (RUN_KEYS): written first with finished=false,
                           rewritten with finished=true at the end
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

find_checkpoints refuses pickle-only weights unless the caller allows them, and checks every
checkpoint's weight files from their headers (safetensors sizes, a sharded model's index, GGUF
headers) so a broken file is named before any work. Nothing here loads a model (premem.models does).

    checkpoints = find_checkpoints("runs/r1")
    info = read_run_info("runs/r1")          # premem_run.json, or None for runs made elsewhere
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import re
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from premem.errors import InputError
from premem.files import atomic_path

log = logging.getLogger(__name__)

RUN_INFO = "premem_run.json"


@dataclasses.dataclass(frozen=True)
class RunKey:
    name: str
    same_run: bool = False  # two runs differing in it are different runs: a finished run is reused only if it matches
    column: bool = False  # a column of the score store's runs table
    absent: Any = None  # what a record written before the key existed meant by its absence


# Every key of premem_run.json, in the order `premem train` writes them: the one list of them.
RUN_KEYS = (
    RunKey("run"),  # the run's name
    RunKey("model", column=True),  # the model finetuned, as the config named it
    RunKey("model_path", same_run=True),  # ... resolved
    RunKey("method", same_run=True, absent="sft"),  # sft or dpo
    RunKey("beta", same_run=True),  # dpo only
    RunKey("ref_model"),  # dpo only: the reference model, as named
    RunKey("ref_model_path", same_run=True),  # ... resolved
    RunKey("lora", same_run=True),  # LoRA runs only: {rank, alpha, dropout, target_modules} (absent: full finetuning)
    RunKey("lr", same_run=True, column=True),
    RunKey("epochs", same_run=True, column=True),
    RunKey("data_fraction", same_run=True, column=True),
    RunKey("seed", same_run=True, column=True),
    RunKey("batch_size", same_run=True, column=True),
    RunKey("n_train", column=True),  # examples trained on
    RunKey("train_example_ids"),  # their ids, sorted
    RunKey("checkpoints"),  # [{step, epoch}]
    RunKey("template", same_run=True),
    RunKey("max_length", same_run=True),
    RunKey("lr_scheduler", same_run=True),
    RunKey("warmup_ratio", same_run=True),
    RunKey("weight_decay", same_run=True),
    RunKey("grad_accum"),
    RunKey("save_every", same_run=True),
    RunKey("checkpoints_asked", same_run=True),  # the config's `checkpoints`
    RunKey("train_path"),
    RunKey("train_fingerprint", same_run=True),
    RunKey("finished"),
    RunKey("seconds"),  # set when finished
    RunKey("world_size"),  # ...
    RunKey("workers"),  # ... each training process's record
)
SAME_RUN_KEYS = tuple(k.name for k in RUN_KEYS if k.same_run)
RUN_COLUMNS = tuple(k.name for k in RUN_KEYS if k.column)


def run_record(**values) -> dict:
    """A premem_run.json record of these values, in RUN_KEYS order (an unknown key is a bug here)."""
    order = {k.name: i for i, k in enumerate(RUN_KEYS)}
    unknown = [k for k in values if k not in order]
    if unknown:
        raise ValueError(f"not keys of {RUN_INFO}: {', '.join(unknown)}; add them to premem.runs.RUN_KEYS")
    return dict(sorted(values.items(), key=lambda kv: order[kv[0]]))


def run_difference(before: dict, after: dict) -> tuple[str, Any, Any] | None:
    """The first key that makes `after` another run than `before`: (key, its value before, after)."""
    for k in RUN_KEYS:
        if k.same_run and before.get(k.name, k.absent) != after.get(k.name):
            return k.name, before.get(k.name, k.absent), after.get(k.name)
    return None


def read_run_info(run_dir: str | Path) -> dict | None:
    """The run's premem_run.json, or None if it has none."""
    path = Path(run_dir) / RUN_INFO
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not readable JSON ({e})") from None


def write_run_info(run_dir: str | Path, info: dict) -> None:
    # one key per line, each value on its line: readable, and the id list stays one line
    text = "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in info.items()) + "\n}\n"
    with atomic_path(Path(run_dir) / RUN_INFO) as tmp:
        tmp.write_text(text)


def list_checkpoints(run_dir: str | Path, allow_pickle: bool = False) -> list[dict]:
    """[{step, epoch}] of a Trainer run's checkpoints, as `premem score` will find them."""
    out = []
    for c in find_checkpoints(run_dir, allow_pickle=allow_pickle):
        state = json.loads((c.path / "trainer_state.json").read_text())
        out.append({"step": c.step, "epoch": round(float(state["epoch"]), 4)})
    return out


# -- finding checkpoints ----------------------------------------------------------------------

KINDS = ("full", "lora", "gguf")
CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
_GGUF_STEP = re.compile(r"(?:step|checkpoint)[-_=]?(\d+)", re.IGNORECASE)
_QUANT_TAG = re.compile(r"(?<![A-Za-z0-9])(?:I?Q\d+(?:_[A-Za-z0-9]+)*|BF16|F16|F32|F64)(?![A-Za-z0-9])", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![A-Za-z0-9])(\d+)(?![A-Za-z0-9])")
# Trainer state saved beside the weights; pickles too, but not weights
_TRAINER_FILES = {"training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt"}


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


def find_checkpoints(
    run_dir: str | Path, run_name: str | None = None, base_model: str | None = None, *, allow_pickle: bool = False
) -> list[Checkpoint]:
    """Every checkpoint of the run in run_dir, sorted by step. Bad or empty runs raise InputError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run directory does not exist")
    run = run_name or run_dir.resolve().name
    found: list[Checkpoint] = []
    folders = sorted((int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_DIR.match(p.name)))
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
        base_model = base_model or adapter_base(folder)
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


def check_pickle(folder: Path, allow_pickle: bool) -> None:
    """InputError if the folder's only weights are pickles and they are not allowed: a checkpoint found
    with allow_pickle may be loaded without it."""
    _inspect(folder, folder.name, 0, None, allow_pickle, gguf=False)


def _trainer_file(name: str) -> bool:
    return name in _TRAINER_FILES or name.startswith("rng_state")


def adapter_base(folder: Path) -> str | None:
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


# -- checking the weight files -------------------------------------------------------------
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




def _has(package: str) -> bool:
    return importlib.util.find_spec(package) is not None
