"""Is a checkpoint written yet? A watcher must never score one the trainer is still writing.

A trainer writes a checkpoint folder file by file, in place: transformers' Trainer writes config.json, the weights
(one model.safetensors, or shards and their model.safetensors.index.json), the tokenizer, and trainer_state.json
last. A folder is complete when

    - its weights are all there at their final sizes: every safetensors file's header parses and the file is exactly
      8 + header length + the end of the last tensor's data long; a sharded model's index parses and every shard it
      names is there and complete; a LoRA folder has adapter_config.json and a complete adapter_model.safetensors;
    - the file the trainer writes last (`state_file`, transformers' trainer_state.json; empty: none) is there and
      parses: so the tokenizer, written before it, is complete too.

A final model in the run directory itself (what `trainer.save_model(output_dir)` writes after training) is judged by
its weights alone: no trainer state comes with it. Reading headers only, this takes milliseconds per checkpoint.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from premem.errors import InputError
from premem.runs import RUN_INFO, Checkpoint, check_weight_files, read_run_info

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
INDEX = "model.safetensors.index.json"
ADAPTER = ("adapter_config.json", "adapter_model.safetensors")
MAX_HEADER = 100 * 2**20  # safetensors caps its header at 100 MB: a larger length is a file cut in its first 8 bytes


def safetensors_complete(path: Path) -> bool:
    """True when the file is exactly as long as its header says: header length, header, then the tensors' data."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little") if size >= 8 else -1
            if not 0 < n <= MAX_HEADER or 8 + n > size:
                return False
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return size == 8 + n + int(end)
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return False


def _json_complete(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


def weights_problem(folder: Path) -> str | None:
    """Why the folder's weights are not complete (yet), or None when they are (pickle-only weights: always None,
    and premem score refuses them unless allowed)."""
    names = {p.name for p in folder.iterdir() if p.is_file()}
    if "adapter_config.json" in names or "adapter_model.safetensors" in names:
        missing = [n for n in ADAPTER if n not in names]
        if missing:
            return f"{missing[0]} missing"
        if not _json_complete(folder / ADAPTER[0]):
            return f"{ADAPTER[0]} not readable yet"
        return None if safetensors_complete(folder / ADAPTER[1]) else f"{ADAPTER[1]} not fully written"
    if "config.json" not in names or not _json_complete(folder / "config.json"):
        return "config.json missing or not readable yet"
    shards = sorted(n for n in names if n.endswith(".safetensors"))
    if INDEX in names:
        try:
            listed = set(json.loads((folder / INDEX).read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{INDEX} not readable yet"
        missing = sorted(listed - names)
        if missing:
            return f"{missing[0]} (named by {INDEX}) missing"
        shards = sorted(set(shards) | listed)
    elif not shards:  # pickle weights have no header to check: the state file, written last, says they are whole
        pickles = [n for n in names if n.startswith("pytorch_model") and n.endswith(".bin")]
        return None if pickles else "no *.safetensors weights yet"
    broken = next((n for n in shards if not safetensors_complete(folder / n)), None)
    return f"{broken} not fully written" if broken else None


def folder_problem(folder: Path, state_file: str = "trainer_state.json") -> str | None:
    """Why a checkpoint folder is not complete yet (weights, then the trainer's last file), or None."""
    problem = weights_problem(folder)
    if problem is None and state_file and not _json_complete(folder / state_file):
        problem = f"{state_file} (written last) missing or not readable yet"
    return problem


@dataclass
class RunState:
    """What a run directory holds now, as a watcher sees it."""

    path: Path
    complete: list[int] = field(default_factory=list)  # steps of the complete checkpoint-<step> folders
    pending: dict[str, str] = field(default_factory=dict)  # folder or file still being written -> why
    final_model: bool = False  # a complete final model (or adapter) in the run directory itself
    marker: bool = False  # premem_run.json says finished (premem train writes it once training ended)

    @property
    def finished(self) -> bool:
        """The trainer is done: a final model at the run root, or premem train's finished marker."""
        return self.final_model or self.marker

    @property
    def ready(self) -> bool:
        """Everything the run directory holds is complete: scoring it now reads no half-written file."""
        return not self.pending


def run_state(run_dir: str | Path, state_file: str = "trainer_state.json") -> RunState:
    """The run directory's checkpoints, complete or still being written, and whether the run has finished."""
    run_dir = Path(run_dir)
    state = RunState(run_dir)
    if not run_dir.is_dir():
        return state
    for p in sorted(run_dir.iterdir()):
        if p.is_dir() and (m := CHECKPOINT_DIR.match(p.name)):
            problem = folder_problem(p, state_file)
            if problem is None:
                state.complete.append(int(m.group(1)))
            else:
                state.pending[p.name] = problem
        elif p.is_file() and p.name.endswith(".gguf"):
            try:  # premem.runs reads the header and tensor table: a cut file fails there
                check_weight_files([Checkpoint(run_dir.name, 0, run_dir, "gguf", gguf_file=p.name)])
            except InputError:
                state.pending[p.name] = "not fully written"
    state.complete.sort()
    names = {p.name for p in run_dir.iterdir() if p.is_file()}
    if "config.json" in names or set(ADAPTER) & names:  # a final model being written, or written
        problem = weights_problem(run_dir)
        state.final_model = problem is None
        if problem and any(n.endswith(".safetensors") or n in ADAPTER for n in names):
            state.pending["final model"] = problem
    try:
        state.marker = bool((read_run_info(run_dir) or {}).get("finished"))
    except InputError:  # premem_run.json being rewritten: read it again next time
        state.pending[RUN_INFO] = "not readable yet"
    return state
