"""Sampling and scoring checkpoints: backends (vLLM, Hugging Face transformers) behind one small
interface (`premem.sampling.backend`), checkpoint discovery and loading
(`premem.runs`, `premem.models`), Ray actors that work through (checkpoint, shard) tasks, and the
`premem score` job. Submodules are imported where used: vLLM and Ray are heavy, optional extras.
"""
