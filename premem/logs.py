"""Quiet default output: the libraries' own messages only when the user asks for them (premem -v).

transformers, datasets, huggingface_hub and vLLM print progress bars ("Loading weights",
"Writing model shards") and advice meant for their own developers. premem's progress bars and
results are what a user reads, so by default the libraries say only errors. Their settings are
environment variables read when a library is imported, so they are set here before that, and
they reach the processes started from here (local Ray workers, vLLM engines, training workers);
a library already imported is told directly. Ray actors on other machines call this themselves.
"""

from __future__ import annotations

import logging
import os
import sys

# what each library reads at import; setdefault: a value the user set wins
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DATASETS_VERBOSITY": "error",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "VLLM_LOGGING_LEVEL": "ERROR",
}


def quiet_libraries(verbose: bool) -> None:
    """Unless verbose: the libraries premem drives log errors only and show no progress bars."""
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def verbose() -> bool:
    """Whether premem logs at debug level (premem -v): what actors and other processes are told."""
    return logging.getLogger("premem").isEnabledFor(logging.DEBUG)
