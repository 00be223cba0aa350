"""Writing files so that nothing is ever half-written.

`atomic_path(dest)` yields a temporary path beside `dest`; when the block finishes, the
temporary file is renamed over `dest` (atomic on POSIX), and if the block raises it is
deleted. A reader sees the old file or the new one, never a torn one, and a killed job
leaves at most a stray `.tmp` file, never a truncated result.

`staged_dir(out)` does the same for a directory: the block fills a temporary directory beside
`out`, which then replaces `out` (an earlier one is put back if the rename fails).

`sha256_file(path)`: a file's sha256, read in blocks (manifests record them so a changed input
is caught).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result should get the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A temporary directory beside out, renamed to out when the block succeeds (replacing out), else removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a result should get the usual mode
    old = None
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.rename(out, old / "out")
        try:
            os.rename(tmp, out)
        except OSError:
            if old is not None:
                os.rename(old / "out", out)  # put the earlier output back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
