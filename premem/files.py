"""Writing files so that nothing is ever half-written, and never over what a job reads.

`check_output(path, inputs, kind=..., what="--out")` is the one check every verb runs on each of
its outputs before any work: it refuses, as an InputError naming the flag and the path, an output
that is one of the job's inputs (the same file by any path: relative, through a symlink, a hard
link), a directory the job replaces that holds an input, an output inside a directory the job
reads as a whole (a run directory it scans for checkpoints), a file output whose path is a
directory (and the other way round), and a place that cannot be written (a parent that is a file,
no permission, a read-only file system). It writes nothing: a missing parent is made later, by
the writer.

`atomic_path(dest)` yields a temporary path beside `dest`; when the block finishes, the
temporary file is renamed over `dest` (atomic on POSIX), and if the block raises it is
deleted. A reader sees the old file or the new one, never a torn one.

`staged_dir(out)` does the same for a directory: the block fills a temporary directory beside
`out`, which then replaces `out` (an earlier one is put back if the rename fails).

A job killed mid-write leaves its temporary `.NAME.HOST-PID.XXXXXXXX.tmp` (or `.old`) beside the
destination. The next write to the same destination removes such leftovers, and only those that
are surely dead: made on this host by a process that no longer runs and untouched since this run
started, or, when the owner cannot be checked (another host on a shared file system, or a name from
before the owner was recorded), untouched for a day. A live writer's temporary file is never
removed (a reused pid only makes a leftover stay longer). An earlier output that a killed `staged_dir` had moved aside (`.old`) while
its successor was not yet in place is put back rather than removed.

`sha256_file(path)`: a file's sha256, read in blocks (manifests record them so a changed input
is caught).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

from premem.errors import InputError

# A leftover whose owner cannot be checked is removed only when untouched for this long.
STALE_AFTER_S = 24 * 3600
# When this run started (near enough: when it first imported this module). A dead owner's leftover is removed
# only if untouched since before then: a writer in another pid namespace on this host looks dead but is writing.
_RUN_START = time.time()


# -- checking an output before any work ---------------------------------------------------


def check_output(
    path: str | Path,
    inputs: Iterable[str | Path | None] = (),
    *,
    kind: str = "file",
    what: str = "--out",
    replaces: bool = False,
    inside: Iterable[str | Path | None] = (),
) -> Path:
    """Refuse an output that would clobber an input or cannot be written; return it as a Path.

    inputs: the files and directories the job reads (empty or None entries are skipped): the output
    must not be one of them. kind: "file" (written whole) or "dir" (written into). replaces: the
    job may replace or clear the directory (a staged output, a run directory started again), so
    it must not hold an input or the working directory. inside: directories the job reads as a
    whole (a run directory scanned for checkpoints): the output must not lie in one.
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', not {kind!r}")
    out = Path(path)
    where = f"{what} {path}"
    if not str(path):
        raise InputError(f"{what}: empty path")
    if out.is_dir() and kind == "file":
        raise InputError(f"{where}: is a directory; name a file")
    if out.exists() and not out.is_dir() and kind == "dir":
        raise InputError(f"{where}: exists and is not a directory")
    resolved = out.resolve()
    for given in _given(inputs):
        src = given.resolve()
        if _same(out, resolved, given, src):
            raise InputError(f"{where}: is also an input ({given}); write somewhere else")
        if replaces and resolved in src.parents:
            raise InputError(f"{where}: holds the input {given}, which replacing it would destroy; "
                             "write somewhere else")
    if replaces and (resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents):
        raise InputError(f"{where}: holds the working directory, which replacing it would destroy; "
                         "write somewhere else")
    for given in _given(inside):
        if given.resolve() in resolved.parents:
            raise InputError(f"{where}: lies inside {given}, which this job reads; write somewhere else")
    _check_writable(out, resolved, where, kind)
    return out


def _given(paths: Iterable[str | Path | None]) -> list[Path]:
    return [Path(p) for p in paths if p is not None and str(p) != ""]


def _same(out: Path, resolved: Path, given: Path, src: Path) -> bool:
    """Whether out and an input are one file: the same resolved path, or the same inode (a hard link)."""
    if resolved == src:
        return True
    try:
        return out.exists() and given.exists() and os.path.samefile(out, given)
    except OSError:
        return False


def _check_writable(out: Path, resolved: Path, where: str, kind: str) -> None:
    """The output's place can be written: an existing directory output itself, else its nearest existing
    ancestor (a missing parent is made by the writer; a file output is renamed into its parent)."""
    if kind == "dir" and out.is_dir():
        target = resolved
    else:
        target = resolved.parent
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            raise InputError(f"{where}: {target} is a file, so nothing can be made under it")
    if not os.access(target, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only_fs(target) else "permission denied"
        raise InputError(f"{where}: cannot write in {target} ({why})")


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


# -- writing ------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=_temp_prefix(dest), suffix=".tmp")
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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=_temp_prefix(out), suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a result should get the usual mode
    old = None
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=_temp_prefix(out), suffix=".old"))
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


# -- leftovers of killed writers ------------------------------------------------------------


def _host() -> str:
    """This host, in 8 hex digits (a name near the 255-byte limit must still fit; no dots, which separate parts)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_prefix(dest: Path) -> str:
    return f".{dest.name}.{_host()}-{os.getpid()}."


def _temp_pattern(dest: Path) -> re.Pattern:
    # .NAME.HOST-PID.XXXXXXXX.tmp|.old, or .NAME.XXXXXXXX.tmp|.old as written before the owner was recorded;
    # XXXXXXXX is tempfile's 8 random characters, so another destination's temporaries never match
    return re.compile(rf"\.{re.escape(dest.name)}\.(?:(?P<host>[0-9a-f]{{8}})-(?P<pid>\d+)\.)?[a-z0-9_]{{8}}\.(?:tmp|old)")


def remove_stale_temps(dest: str | Path) -> list[Path]:
    """Remove the temporary files and directories that killed writers of dest left beside it; returns them."""
    dest = Path(dest)
    pattern, host, start = _temp_pattern(dest), _host(), f".{dest.name}."
    removed = []
    try:
        entries = [e for e in os.scandir(dest.parent) if e.name.startswith(start)]
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None or not _dead(m["host"], m["pid"], entry, host):
            continue
        path = Path(entry.path)
        if entry.name.endswith(".old") and (path / "out").exists() and not dest.exists():
            os.rename(path / "out", dest)  # killed between moving the earlier output aside and its successor in
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _dead(owner_host: str | None, pid: str | None, entry: os.DirEntry, host: str) -> bool:
    try:
        touched = entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return False
    if owner_host == host:
        return touched < _RUN_START and not _running(int(pid))
    return time.time() - touched > STALE_AFTER_S  # an owner we cannot ask: only what nobody touched for long


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


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
