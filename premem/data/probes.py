"""Probe sets for the learning dynamics of finetuning (Ren & Sutherland, ICLR 2025; DESIGN.md §1).

A probe set is a few prompts of the preference data, each with responses of many types, whose
log π(response | prompt) `premem probe track` follows over the checkpoints of a run. `build_probes`
makes every type that can be made offline:

    chosen               the prompt's chosen response y+
    rejected             its rejected response y-
    other_chosen         the chosen response of another probe prompt (the next one in draw order)
    irrelevant           a response from outside the probe set: by default the chosen response of an
                         example of the same data never drawn as a probe prompt (a held-out slice);
                         `irrelevant=PATH` takes the solutions of another dataset instead, which is
                         what the paper means (with one source, "irrelevant" is another problem's
                         answer in the same style, close to other_chosen)
    random_sentence      a plain English sentence from a fixed pool shipped here (SENTENCES)
    shuffled_chosen      y+ with its words in a random order
    shuffled_irrelevant  the irrelevant response with its words in a random order
    random_tokens        as many random token ids as y+ has, decoded (needs `model`: its tokenizer)
    rephrase_chosen      y+ rewritten by `model` through `rephrase_prompt` (model_written: true)
    rephrase_rejected    y- rewritten the same way

The last three load the model, which is the sampling stage's work: premem.sampling.probe_build
makes them and builds the whole set; build_probes here makes the others.

One more type, `greedy` (y*, the teacher-forced argmax on [prompt; y+]), depends on the
checkpoint and is made at track time. Each type draws from its own random stream
(seed, type), so adding a model changes no other type's responses.

The output is a directory: `probes.jsonl` (probe_id, prompt, type, response, model_written;
probe_id is the prompt's example id in the data) and `manifest.json` (the data's path and
fingerprint, n, seed, the types and their counts, premem's version, probes.jsonl's sha256).
It is built beside OUT under a temporary name and renamed into place: nothing half-written.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from premem.version import __version__
from premem.data.examples import DataConfig, Example, ExampleSet, load_example_set
from premem.data.io import parse_json, split_lines
from premem.errors import InputError
from premem.execution import ExecConfig
from premem.files import sha256_file, staged_dir

PROBES_FILE = "probes.jsonl"
MANIFEST_FILE = "manifest.json"

PROBE_TYPES: dict[str, str] = {
    "chosen": "the prompt's chosen response y+",
    "rejected": "the prompt's rejected response y-",
    "rephrase_chosen": "y+ rewritten by a model",
    "rephrase_rejected": "y- rewritten by a model",
    "other_chosen": "the chosen response of another probe prompt",
    "irrelevant": "a response from outside the probe set",
    "random_sentence": "a plain English sentence",
    "shuffled_chosen": "y+ with its words shuffled",
    "shuffled_irrelevant": "the irrelevant response with its words shuffled",
    "random_tokens": "random token ids, decoded",
}
"""The types a probe file may hold, in the order tables show them."""
TRACK_TYPES: dict[str, str] = {"greedy": "y*: the teacher-forced argmax on [prompt; y+], per checkpoint"}
"""Types made at track time (never in a probe file)."""
ALL_TYPES = tuple(PROBE_TYPES) + tuple(TRACK_TYPES)

SENTENCES = (
    "The library opens at nine in the morning on weekdays.",
    "She painted the fence blue before the rain started.",
    "A small boat drifted slowly across the quiet lake.",
    "The children laughed at the puppy chasing its tail.",
    "He forgot his umbrella on the train again.",
    "Fresh bread smells wonderful early in the day.",
    "The mountain road was closed because of the snow.",
    "Our neighbours planted tomatoes in the back garden.",
    "The old clock in the hall stopped at midnight.",
    "Birds gathered on the wire before flying south.",
    "The museum has a new exhibit about ancient maps.",
    "Please close the window when you leave the room.",
    "The orchestra tuned their instruments before the concert.",
    "A gentle wind moved the curtains back and forth.",
    "The coffee shop on the corner sells lemon cake.",
    "They walked along the beach and collected smooth stones.",
    "The train to the city leaves from platform four.",
    "My grandmother tells stories about the village she grew up in.",
    "The cat slept all afternoon in a patch of sunlight.",
    "Thunder rolled over the hills late in the evening.",
    "The students planted a tree behind the school.",
    "He read the letter twice before putting it away.",
    "The market is busiest on Saturday mornings.",
    "A red kite flew high above the green field.",
)
"""The random_sentence pool: everyday sentences about nothing the data is about."""

DEFAULT_REPHRASE_PROMPT = (
    "Rewrite the answer in other words, keeping its meaning and its final result.\n"
    "Question: {prompt}\nAnswer: {response}\nRewritten answer:"
)


@dataclass
class ProbeBuildConfig:
    """What `premem probe build` draws its probe set from, and where it writes it."""

    data: str = ""
    """Preference data (prompt/chosen/rejected; any file or dataset directory premem reads)."""
    out: str = ""
    """Directory to write: probes.jsonl and manifest.json (replaced if it is an earlier probe set)."""
    n: int = 32
    """Probe prompts drawn (seeded) from the data; the examples not drawn are the held-out slice."""
    seed: int = 0
    """Seed of the draw and of every random type."""
    irrelevant: str = ""
    """Data whose solutions are the irrelevant responses (another source); default: the chosen responses of
    the held-out slice of the data."""
    model: str = ""
    """A model directory (or run: its last checkpoint): random_tokens from its tokenizer, and the rephrase_*
    types written by it. Without one those types are left out."""
    rephrase: bool = True
    """With a model: write rephrase_chosen and rephrase_rejected (greedy decoding through the backend)."""
    rephrase_prompt: str = DEFAULT_REPHRASE_PROMPT
    """The model's rephrase prompt; {prompt} and {response} are filled in, the model continues it."""
    rephrase_max_new_tokens: int = 128
    """Longest rephrase generated (it stops at a blank line or "\\nDone.")."""
    exec: ExecConfig = field(default_factory=ExecConfig)
    """How the model runs: exec.backend (hf or vllm) and exec.options (threads, dtype, ...); no Ray actors."""


@dataclass(frozen=True)
class ProbeRow:
    probe_id: int
    prompt: str
    type: str
    response: str
    model_written: bool = False

    def to_json(self) -> str:
        return json.dumps(
            {"probe_id": self.probe_id, "prompt": self.prompt, "type": self.type, "response": self.response,
             "model_written": self.model_written},
            ensure_ascii=False,
        )


ModelRows = Callable[[ProbeBuildConfig, list[Example]], tuple[list[ProbeRow], dict]]
"""Makes the model-written rows of these probe prompts, and the manifest's `model` section."""


@dataclass(frozen=True)
class ProbeSet:
    path: Path  # the probe directory
    rows: list[ProbeRow]
    manifest: dict

    @property
    def fingerprint(self) -> str:
        """sha256 of probes.jsonl's bytes."""
        return sha256_file(self.path / PROBES_FILE)


# -- building ----------------------------------------------------------------------------------


def build_probes(cfg: ProbeBuildConfig, model_rows: ModelRows | None = None) -> ProbeSet:
    """Draw the probe prompts, make every response type, and write cfg.out; returns the probe set.

    model_rows makes the types written with cfg.model (random_tokens, rephrase_*): loading a model is
    a later stage's work, so premem.sampling.probe_build.build_probes passes it; without it a
    cfg.model is refused."""
    if not cfg.data:
        raise InputError("probe build: say which preference data to draw from (--data PATH)")
    if not cfg.out:
        raise InputError("probe build: say where to write the probe set (--out DIR)")
    if cfg.model and model_rows is None:
        raise InputError("model: the model-written types need the model loaded; build with "
                         "premem.sampling.probe_build.build_probes (as `premem probe build` does)")
    out = Path(cfg.out)
    _check_out(out)
    data = load_example_set(DataConfig(path=cfg.data))
    if any(ex.rejected is None for ex in data.examples):
        raise InputError(f"{data.path}: probe build needs preference data (prompt, chosen, rejected); this is {data.format} data")
    if not 2 <= cfg.n <= len(data.examples):
        raise InputError(f"n: expected 2 to {len(data.examples)} probe prompts (the examples in {data.path}), got {cfg.n}")
    order = list(data.examples)
    random.Random(cfg.seed).shuffle(order)
    probes, held_out = order[: cfg.n], order[cfg.n :]
    irrelevant, irrelevant_info = _irrelevant_pool(cfg, held_out)
    rows = offline_rows(probes, irrelevant, cfg.seed)
    model_info = None
    if cfg.model:
        written, model_info = model_rows(cfg, probes)
        rows += written
    rank, drawn = {t: i for i, t in enumerate(PROBE_TYPES)}, {p.example_id: i for i, p in enumerate(probes)}
    rows.sort(key=lambda r: (drawn[r.probe_id], rank[r.type]))
    manifest = {
        "premem_version": __version__,
        "data": {"path": str(data.path), "fingerprint": data.fingerprint, "format": data.format,
                 "n_examples": len(data.examples)},
        "n": cfg.n,
        "seed": cfg.seed,
        "irrelevant": irrelevant_info,
        "model": model_info,
        "types": {t: sum(r.type == t for r in rows) for t in PROBE_TYPES if any(r.type == t for r in rows)},
        "probe_ids": [p.example_id for p in probes],
    }
    return _write(out, rows, manifest)


def offline_rows(probes: list[Example], irrelevant: list[str], seed: int) -> list[ProbeRow]:
    """Every type needing no model, for these probe prompts (irrelevant: the pool, cycled through)."""
    rng = {t: random.Random(f"{seed}/{t}") for t in PROBE_TYPES}
    pool = list(irrelevant)
    rng["irrelevant"].shuffle(pool)
    rows = []
    for i, ex in enumerate(probes):
        irr = pool[i % len(pool)]
        responses = {
            "chosen": ex.solution,
            "rejected": ex.rejected,
            "other_chosen": probes[(i + 1) % len(probes)].solution,
            "irrelevant": irr,
            "random_sentence": rng["random_sentence"].choice(SENTENCES),
            "shuffled_chosen": shuffle_words(ex.solution, rng["shuffled_chosen"]),
            "shuffled_irrelevant": shuffle_words(irr, rng["shuffled_irrelevant"]),
        }
        rows += [ProbeRow(ex.example_id, ex.question, t, r) for t, r in responses.items()]
    return rows


def shuffle_words(text: str, rng: random.Random) -> str:
    """text's words (split on whitespace) in a random order, different from the original when possible."""
    words = text.split()
    shuffled = list(words)
    for _ in range(10):
        rng.shuffle(shuffled)
        if shuffled != words:
            break
    return " ".join(shuffled)


def _irrelevant_pool(cfg: ProbeBuildConfig, held_out: list[Example]) -> tuple[list[str], dict]:
    if cfg.irrelevant:
        other = load_example_set(DataConfig(path=cfg.irrelevant))
        if not other.examples:
            raise InputError(f"{other.path}: no examples to take irrelevant responses from")
        info = {"source": "data", "path": str(other.path), "fingerprint": other.fingerprint}
        return [ex.solution for ex in other.examples], info
    if not held_out:
        raise InputError(
            f"n: all {cfg.n} examples are probe prompts, which leaves none held out for the irrelevant responses; "
            "draw fewer (--n) or give another source (irrelevant=PATH)"
        )
    return [ex.solution for ex in held_out], {"source": "held_out", "n_examples": len(held_out)}


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_FILE).is_file())):
        raise InputError(f"{out}: exists and is not an earlier probe set; choose a new --out")


def _write(out: Path, rows: list[ProbeRow], manifest: dict) -> ProbeSet:
    """probes.jsonl and manifest.json in a temporary directory beside out, renamed into place."""
    with staged_dir(out) as tmp:
        (tmp / PROBES_FILE).write_text("".join(r.to_json() + "\n" for r in rows), encoding="utf-8")
        manifest = {**manifest, "probes_sha256": sha256_file(tmp / PROBES_FILE)}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return ProbeSet(out, rows, manifest)


# -- reading -----------------------------------------------------------------------------------


FIELDS = {"probe_id": int, "prompt": str, "type": str, "response": str, "model_written": bool}


def load_probes(path: str | Path) -> ProbeSet:
    """A probe directory (or its probes.jsonl), every row checked; a bad row is one line naming file and row."""
    path = Path(path)
    folder = path.parent if path.name == PROBES_FILE else path
    file, manifest_file = folder / PROBES_FILE, folder / MANIFEST_FILE
    if not file.is_file():
        raise InputError(f"{file}: no probe file here (make one with premem probe build)")
    if not manifest_file.is_file():
        raise InputError(f"{manifest_file}: the probe set has no manifest (make it with premem probe build)")
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise InputError(f"{manifest_file}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("data"), dict):
        raise InputError(f"{manifest_file}: not a probe manifest (no data section)")
    rows, seen, prompts = [], set(), {}
    for i, line in enumerate(split_lines(file.read_text(encoding="utf-8"))):
        where = f"{file} row {i} (line {i + 1})"
        if not line.strip():
            raise InputError(f"{where}: empty line")
        obj = parse_json(line, where)
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object")
        for name, kind in FIELDS.items():
            value = obj.get(name)
            if value is None:
                raise InputError(f"{where}: field {name!r} is missing")
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise InputError(f"{where}: field {name!r} must be {kind.__name__}, got {value!r}")
        if obj["probe_id"] < 0:
            raise InputError(f"{where}: field 'probe_id' is negative ({obj['probe_id']})")
        if obj["type"] in TRACK_TYPES:
            raise InputError(f"{where}: type {obj['type']!r} is made at track time, not read from a probe file")
        if obj["type"] not in PROBE_TYPES:
            raise InputError(f"{where}: unknown type {obj['type']!r}; known: {', '.join(PROBE_TYPES)}")
        for name in ("prompt", "response"):
            if not obj[name].strip():
                raise InputError(f"{where}: field {name!r} is empty")
        key = (obj["probe_id"], obj["type"])
        if key in seen:
            raise InputError(f"{where}: probe {key[0]} has a second {key[1]!r} response")
        if prompts.setdefault(obj["probe_id"], obj["prompt"]) != obj["prompt"]:
            raise InputError(f"{where}: probe {key[0]} has another prompt than on its first row")
        seen.add(key)
        rows.append(ProbeRow(obj["probe_id"], obj["prompt"], obj["type"], obj["response"], obj["model_written"]))
    if not rows:
        raise InputError(f"{file}: no probe rows")
    recorded = manifest.get("probes_sha256")
    if recorded and recorded != sha256_file(file):
        raise InputError(f"{file}: changed since it was built (its manifest records another sha256); rebuild it")
    return ProbeSet(folder, rows, manifest)


def check_probes_match(probes: ProbeSet, data: ExampleSet) -> None:
    """Refuse a probe set built for other data than `data` (by the fingerprint its manifest records)."""
    built = probes.manifest["data"].get("fingerprint")
    if built != data.fingerprint:
        raise InputError(
            f"{probes.path / MANIFEST_FILE}: a probe file built for another dataset "
            f"({probes.manifest['data'].get('path')}, fingerprint {str(built)[:12]}…), not {data.path} "
            f"(fingerprint {data.fingerprint[:12]}…)"
        )


def summary(probes: ProbeSet) -> str:
    """What `premem probe build` prints: the responses per type, the rephrases, the files written."""
    m = probes.manifest
    counts = ", ".join(f"{t} {n}" for t, n in m["types"].items())
    lines = [f"{m['n']} probe prompts from {m['data']['path']} (seed {m['seed']}), {len(probes.rows)} responses: {counts}"]
    if m["model"] and "rephrased" in m["model"]:
        lines.append(f"rephrases written by {m['model']['path']}: {m['model']['rephrased']} "
                     f"({m['model']['rephrase_dropped']} dropped: empty, unchanged or too long)")
    lines.append(f"-> {probes.path / PROBES_FILE}\n-> {probes.path / MANIFEST_FILE} "
                 f"(data fingerprint {m['data']['fingerprint'][:12]}…)")
    return "\n".join(lines)
