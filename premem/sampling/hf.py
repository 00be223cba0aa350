"""The Hugging Face transformers backend: any causal LM transformers loads, on CPU or GPU.

Scoring (`target_logprobs`) is one teacher-forced forward pass per batch: prompt + target
right-padded, log_softmax in float32 at the target positions, the gold tokens' log-probs summed.
`target_argmax` reads the same log-distributions at their maximum instead of at the gold token.

Threads: torch's thread count is process-wide. The backend sets it to options.threads while it
holds a model and gives the caller's count back on close(), so a notebook or a test that loads
one does not run slower (or faster) afterwards.

Sampling (`generate`) is a small decoding loop of our own rather than `model.generate`, for
three properties `generate` does not give:

- Per-sample random streams. Sample j of prompt i draws its uniforms from its own generator,
  seeded from (seeds[i], j), and picks a token by inverting the (top-p filtered) CDF. So a
  sample depends on its prompt, its seed and the checkpoint, not on the batch it ran in: the
  batch only enters through floating-point rounding (padding, batch shape), which changes a
  token only when a drawn uniform lies within rounding error (~1e-6) of a boundary of the
  CDF. In practice a shard re-run alone reproduces the samples it gave in any batch; exactly,
  the same call (same prompts, seeds, params, batch_size, threads, device) gives the same
  output bit for bit on CPU. (`generate` draws from torch's global RNG, shared by all rows.)
- One prefill for the k samples: the prompts are prefilled once and the KV cache copied k
  times (`generate` with num_return_sequences prefills every copy).
- Rows leave the batch as soon as they finish (eos or a stop string), so a long answer does
  not keep short ones computing.

Greedy decoding (temperature 0) decodes each prompt once and repeats the answer k times.

Reuse: `reload(checkpoint)` copies another checkpoint's safetensors into the model held, when
`engine_identity` says the two checkpoints differ in their weights' values only (same config,
generation config, tokenizer files, tensor names and shapes); the model is then exactly what a
fresh load of that checkpoint gives (the same tensors, cast by the same copy), for the cost of
reading the weights.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from premem.errors import InputError
from premem.execution import BackendOptions
from premem.sampling.backend import (
    Completion,
    SamplingParams,
    TargetArgmax,
    TargetLogprob,
    check_scoring_inputs,
)


class HFBackend:
    name = "hf"

    def __init__(self, checkpoint, options: BackendOptions):
        from premem.models import load_model_and_tokenizer

        self._caller_threads = torch.get_num_threads()  # given back by close()
        torch.set_num_threads(options.threads)
        self.options = options
        self.identity = engine_identity(checkpoint)  # what a checkpoint must share with this one to be reloaded
        try:
            self.model, self.tokenizer = load_model_and_tokenizer(checkpoint, options)
        except BaseException:
            self.close()
            raise
        self.device = next(self.model.parameters()).device
        tok = self.tokenizer
        # pad positions are masked out, so any id will do when the tokenizer has no pad token
        self.pad_id = next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)
        self.eos_ids = _eos_ids(self.model, tok)
        # ask the prefill for the last position's logits only, where the model supports it
        self._keep_last = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    @torch.no_grad()
    def reload(self, checkpoint) -> bool:
        """Copy checkpoint's weights into the model held: True when done; False (nothing changed) when they do
        not fit it (another architecture, config or tokenizer; a LoRA adapter, GGUF or pickle weights)."""
        if self.model is None or self.identity is None or engine_identity(checkpoint) != self.identity:
            return False
        layout = _safetensors_layout(checkpoint.path)
        params = self.model.state_dict()  # detached views of the model's own tensors: copies land in the model
        if set(layout) - set(params) or any(list(params[k].shape) != shape for k, (_, shape) in layout.items()):
            return False
        # every tensor of the model must come from the files, or share its storage with one that does (lm_head tied
        # to the embeddings): a partial file would silently keep the old checkpoint's weights
        loaded = {params[k].data_ptr() for k in layout}
        if any(params[k].data_ptr() not in loaded for k in params if k not in layout):
            return False
        from safetensors import safe_open

        for f in _safetensors_files(checkpoint.path):  # one tensor at a time: no second copy of the model in memory
            with safe_open(str(f), framework="pt") as weights:
                for name in weights.keys():
                    params[name].copy_(weights.get_tensor(name))  # the same cast from the file's dtype as a load's
        return True

    def close(self) -> None:
        """Drop the model, so its memory is free before the next checkpoint loads, and give the caller's
        thread count back. Idempotent."""
        self.model = None
        threads, self._caller_threads = self._caller_threads, None
        if threads is not None:
            torch.set_num_threads(threads)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- scoring -------------------------------------------------------------------------------

    @torch.no_grad()
    def target_logprobs(self, prompt_ids: list[list[int]], target_ids: list[list[int]]) -> list[TargetLogprob]:
        check_scoring_inputs(prompt_ids, target_ids)
        out: list[TargetLogprob | None] = [None] * len(prompt_ids)
        for i, logp, gold_ids in self._teacher_forced(prompt_ids, target_ids):
            gold = logp.gather(-1, gold_ids[:, None]).squeeze(-1)
            out[i] = TargetLogprob(float(gold.double().sum()), len(target_ids[i]))
        return out

    @torch.no_grad()
    def target_argmax(self, prompt_ids: list[list[int]], target_ids: list[list[int]]) -> list[TargetArgmax]:
        check_scoring_inputs(prompt_ids, target_ids, "target_argmax")
        out: list[TargetArgmax | None] = [None] * len(prompt_ids)
        for i, logp, _ in self._teacher_forced(prompt_ids, target_ids):
            best = logp.max(-1)
            out[i] = TargetArgmax(tuple(best.indices.tolist()), float(best.values.sum()))
        return out

    def _teacher_forced(self, prompt_ids: list[list[int]], target_ids: list[list[int]]):
        """Teacher forcing on [prompt; target], batched: yields (i, logp, target) per example i, in no set order,
        where logp[k] is the float32 log-distribution over the vocabulary that predicts the target's token k
        and target is its token ids (both on the model's device). Callers check the inputs first and run it
        under torch.no_grad."""
        seqs = [p + t for p, t in zip(prompt_ids, target_ids)]
        # sorted by length, so a batch pads little; callers put results back in input order by i
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for batch in _chunks(order, self.options.batch_size):
            width = max(len(seqs[i]) for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):  # right padding: real tokens keep positions 0..n-1
                ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
                mask[row, : len(seqs[i])] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits
            for row, i in enumerate(batch):
                p, t = len(prompt_ids[i]), len(target_ids[i])
                # logits at position j predict token j+1: the target's tokens are predicted from p-1 .. p+t-2.
                # float32 log_softmax row by row: a bf16 model's logits are not precise enough to sum,
                # and a float32 copy of the whole batch's logits would be large for a big vocabulary
                yield i, logits[row, p - 1 : p + t - 1].float().log_softmax(-1), ids[row, p : p + t]

    # -- sampling ------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, seeds: list[int]) -> list[list[Completion]]:
        if len(prompt_ids) != len(seeds):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(seeds)} seeds")
        if any(not p for p in prompt_ids):
            raise InputError("generate: a prompt is empty (it needs at least a BOS token)")
        if params.max_new_tokens < 1:  # no room left in the context: an empty answer
            return [[Completion("", 0)] * params.samples for _ in prompt_ids]
        params.validate()
        out: list[list[Completion] | None] = [None] * len(prompt_ids)
        order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
        for batch in _chunks(order, self.options.batch_size):
            answers = self._generate_batch([prompt_ids[i] for i in batch], params, [seeds[i] for i in batch])
            for i, completions in zip(batch, answers):
                out[i] = completions
        return out

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, seeds: list[int]) -> list[list[Completion]]:
        k = params.samples
        greedy = params.temperature == 0
        copies = 1 if greedy else k  # greedy samples are all alike: decode once
        rows = _Rows.prefill(self, prompts, copies)
        streams = [_row_seed(s, j) for s in seeds for j in range(copies)]
        # every row's uniforms drawn up front from its own generator, on the CPU: device-independent
        n = params.max_new_tokens
        uniforms = torch.stack(
            [torch.rand(n, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in streams]
        )
        stop = _StopCheck(self.tokenizer, params.stop or [])
        generated: list[list[int]] = [[] for _ in streams]
        for step in range(params.max_new_tokens):
            u = uniforms[rows.active, step].to(rows.logits.device)
            tokens = _pick(rows.logits, u, params.temperature, params.top_p)
            done = []
            for a, (r, t) in enumerate(zip(rows.active.tolist(), tokens.tolist())):
                generated[r].append(t)
                if t in self.eos_ids or stop.hit(generated[r]):
                    done.append(a)
            if len(done) == len(tokens) or step == params.max_new_tokens - 1:
                break
            rows.step(tokens, done)
        out = []
        for b in range(len(prompts)):
            answers = [self._completion(generated[b * copies + j], params.stop or []) for j in range(copies)]
            out.append(answers * k if greedy else answers)
        return out

    def _completion(self, tokens: list[int], stop: list[str] | None) -> Completion:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Completion(cut_at_stop(text, stop), len(tokens))


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt", "merges.txt")


def engine_identity(checkpoint) -> str | None:
    """What an engine loaded from checkpoint depends on besides its weights' values: a hash of its config and
    generation config (architecture, sizes, dtype, eos ids), its tokenizer's files, and its tensors' names, dtypes
    and shapes. Two checkpoints with the same identity differ in their weights' values only, so an engine holding
    one can take the other's weights in place (both backends' reload). None: a checkpoint whose weights cannot be
    swapped in (a LoRA adapter, a GGUF file, pickle weights, an unreadable file: a fresh load says what is wrong)."""
    if checkpoint.kind != "full":
        return None
    try:
        return _identity(checkpoint) if _safetensors_files(checkpoint.path) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _identity(checkpoint) -> str:
    from premem.models import tokenizer_dir

    h = hashlib.sha256()
    for name in ("config.json", "generation_config.json"):
        f = checkpoint.path / name
        config = json.loads(f.read_text()) if f.is_file() else None
        if isinstance(config, dict):  # what transformers writes that does not change the model
            for key in ("transformers_version", "_name_or_path"):
                config.pop(key, None)
        h.update(json.dumps(config, sort_keys=True).encode() + b"\0")
    tokenizer = tokenizer_dir(checkpoint)
    for name in _TOKENIZER_FILES:
        f = tokenizer / name if tokenizer else None
        h.update(f.read_bytes() if f and f.is_file() else b"-")
        h.update(b"\0")
    # the tensors' names, dtypes and shapes (from the headers): a file missing one would leave the old one in place
    h.update(json.dumps(sorted(_safetensors_layout(checkpoint.path).items())).encode())
    return h.hexdigest()


def _safetensors_files(path: Path) -> list[Path]:
    """A model directory's safetensors weight files: the shards its index names, or model.safetensors."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [path / "model.safetensors"] if (path / "model.safetensors").is_file() else []


def _safetensors_layout(path: Path) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, shape) of every tensor in the directory's safetensors files, read from their headers."""
    layout = {}
    for f in _safetensors_files(path):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        layout |= {k: (v["dtype"], v["shape"]) for k, v in header.items() if k != "__metadata__"}
    return layout


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    """text up to the earliest occurrence of any stop string."""
    cut = min((i for s in stop or () if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


@dataclass
class _Rows:
    """The rows being decoded: KV cache, attention mask, next positions, and last logits."""

    backend: HFBackend
    cache: object
    mask: torch.Tensor  # (A, L) 1 where a real token sits in the cache
    positions: torch.Tensor  # (A,) position id of the next token
    logits: torch.Tensor  # (A, vocab) float32, the distribution of the next token
    active: torch.Tensor  # (A,) which of the original rows these are

    @classmethod
    def prefill(cls, backend: HFBackend, prompts: list[list[int]], copies: int) -> _Rows:
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), backend.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for b, p in enumerate(prompts):  # left padding: every prompt ends at the last column
            ids[b, width - len(p) :] = torch.tensor(p)
            mask[b, width - len(p) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens at 0..n-1 whatever the padding
        ids, mask, positions = (x.to(backend.device) for x in (ids, mask, positions))
        extra = {"logits_to_keep": 1} if backend._keep_last else {}
        out = backend.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
        cache = out.past_key_values
        logits = out.logits[:, -1].float()
        if copies > 1:  # the k samples of a prompt share its prefill
            cache.batch_repeat_interleave(copies)
            mask, positions, logits = (x.repeat_interleave(copies, 0) for x in (mask, positions, logits))
        active = torch.arange(len(prompts) * copies)
        return cls(backend, cache, mask, positions[:, -1] + 1, logits, active)

    def step(self, tokens: torch.Tensor, done: list[int]) -> None:
        """Drop the finished rows, then run one decoding step on the others."""
        if done:
            keep = torch.tensor(sorted(set(range(len(tokens))) - set(done)), device=self.mask.device)
            self.cache.batch_select_indices(keep)
            self.mask, self.positions, tokens = self.mask[keep], self.positions[keep], tokens[keep]
            self.active = self.active[keep.cpu()]
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.mask), 1))], dim=1)
        out = self.backend.model(
            input_ids=tokens[:, None],
            attention_mask=self.mask,
            position_ids=self.positions[:, None],
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache = out.past_key_values
        self.logits = out.logits[:, -1].float()
        self.positions = self.positions + 1


def _pick(logits: torch.Tensor, u: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """One token per row: argmax when greedy, else the inverse CDF of the nucleus at uniform u."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    probs, index = probs.sort(dim=-1, descending=True, stable=True)  # stable: ties broken by token id
    if top_p < 1.0:
        # keep the most likely tokens until their mass reaches top_p (the one that crosses it included)
        outside = probs.cumsum(-1) - probs >= top_p
        outside[:, 0] = False  # the most likely token always stays, even at a tiny top_p
        probs = probs.masked_fill(outside, 0.0)
    cdf = probs.double().cumsum(-1)
    choice = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).clamp(max=probs.shape[-1] - 1)
    return index.gather(-1, choice).squeeze(-1)


class _StopCheck:
    """Has a row's text just grown a stop string? Decodes only the last few tokens of the row.

    A stop string of c characters spans at most c tokens; two more tokens in front keep
    decoders that drop a leading space from the first token (SentencePiece) from cutting it.
    """

    def __init__(self, tokenizer, stop: list[str] | None):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop or () if s]
        self.window = max((len(s) for s in self.stop), default=0) + 2

    def hit(self, tokens: list[int]) -> bool:
        if not self.stop:
            return False
        tail = self.tokenizer.decode(tokens[-self.window :], skip_special_tokens=True)
        return any(s in tail for s in self.stop)


def _eos_ids(model, tokenizer) -> set[int]:
    """The tokenizer's eos and the model's generation-config eos ids (as vLLM stops on both)."""
    ids = {tokenizer.eos_token_id}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
    return {i for i in ids if i is not None}


def _row_seed(seed: int, sample: int) -> int:
    """A 63-bit seed for sample `sample` of a query seeded `seed` (hashed: nearby seeds stay unrelated)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{sample}".encode()).digest()[:8], "little") >> 1


def _chunks(items: list, size: int):
    size = max(1, size)
    for start in range(0, len(items), size):
        yield items[start : start + size]
