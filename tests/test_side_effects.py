"""Importing premem changes nothing outside it: a notebook that imports any premem module keeps its matplotlib
backend (inline plots), its torch thread count, and its files.

Every module is imported in a fresh Python process, with a fresh home, temporary directory and working
directory; the process reports what it saw before and after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent("""
    import importlib, json, os, pkgutil, sys

    import matplotlib
    import matplotlib.figure  # matplotlib's own font cache is written now, in the fresh home: not premem's doing
    import torch

    def files():
        return sorted(str(p) for d in sys.argv[1:] for p in __import__("pathlib").Path(d).rglob("*"))

    torch.set_num_threads(3)  # a count no module would pick by itself
    backend = dict.__getitem__(matplotlib.rcParams, "backend")  # raw: reading it through rcParams would resolve it
    before = files()
    import premem

    names = sorted(m.name for m in pkgutil.walk_packages(premem.__path__, "premem.") if m.name != "premem.__main__")
    for name in names:
        importlib.import_module(name)
    print(json.dumps({
        "modules": names,
        "backend unchanged": dict.__getitem__(matplotlib.rcParams, "backend") is backend,
        "pyplot imported": "matplotlib.pyplot" in sys.modules,
        "threads": torch.get_num_threads(),
        "new files": sorted(set(files()) - set(before)),
    }))
""")


@pytest.mark.slow
def test_importing_every_module_has_no_side_effects(tmp_path):
    dirs = {name: tmp_path / name for name in ("home", "tmp", "cwd")}
    for d in dirs.values():
        d.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MPL", "XDG_"))}
    env |= {"HOME": str(dirs["home"]), "TMPDIR": str(dirs["tmp"]), "PYTHONPATH": str(ROOT),
            "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE, *map(str, dirs.values())], cwd=dirs["cwd"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"premem.report.plots", "premem.sampling.hf", "premem.cli"} <= set(seen["modules"])
    assert seen["backend unchanged"] and not seen["pyplot imported"]
    assert seen["threads"] == 3
    assert seen["new files"] == []
