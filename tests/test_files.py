"""premem.files: the output check every verb runs, and leftovers of killed writers cleared on the next write."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from premem.errors import InputError
from premem.files import check_output, remove_stale_temps

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"question": "q", "answer": "#### 1"}\n')
    return path


def refused(*args, **kwargs) -> str:
    with pytest.raises(InputError) as e:
        check_output(*args, **kwargs)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_an_output_that_is_an_input_by_any_path_is_refused(tmp_path, src, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "is also an input" in refused(src, [src])
    assert "is also an input" in refused("train.jsonl", [src])  # relative
    assert "is also an input" in refused(tmp_path / "sub" / ".." / "train.jsonl", [src])
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.jsonl").symlink_to(src)
    assert "is also an input" in refused(tmp_path / "link.jsonl", [src])  # through a symlink
    os.link(src, tmp_path / "hard.jsonl")
    assert "is also an input" in refused(tmp_path / "hard.jsonl", [src])  # a hard link: the same inode
    message = refused("train.jsonl", [src], what="--plot")
    assert message.startswith("--plot train.jsonl:")


def test_directories_that_hold_or_hold_in_an_input(tmp_path, src):
    store = tmp_path / "store"
    store.mkdir()
    assert "is also an input" in refused(store, [store], kind="dir", what="--store")
    # a directory the job replaces must not hold an input; one it only writes into may
    assert "holds the input" in refused(tmp_path, [src], kind="dir", replaces=True)
    assert check_output(tmp_path, [src], kind="dir") == tmp_path
    # an output inside a directory read as a whole (a run scanned for checkpoints)
    run = tmp_path / "run"
    run.mkdir()
    assert "lies inside" in refused(run / "store", [run], kind="dir", inside=[run])
    assert check_output(tmp_path / "elsewhere", [run], kind="dir", inside=[run]) == tmp_path / "elsewhere"


def test_a_replaced_directory_must_not_hold_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert "working directory" in refused(tmp_path, kind="dir", replaces=True)
    assert "working directory" in refused(".", kind="dir", replaces=True)


def test_file_and_directory_mixups_and_parents_that_cannot_hold_anything(tmp_path, src):
    (tmp_path / "d.jsonl").mkdir()
    assert "is a directory" in refused(tmp_path / "d.jsonl")
    assert "exists and is not a directory" in refused(src, kind="dir")
    assert "is a file" in refused(src / "out.jsonl")
    assert "is a file" in refused(src / "deeper" / "out.jsonl")
    assert "is a file" in refused(src / "store", kind="dir")
    # a missing parent is fine: the writer makes it; the check itself writes nothing
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert check_output(tmp_path / "new" / "deeper" / "out.jsonl") == tmp_path / "new" / "deeper" / "out.jsonl"
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


CHECK_AS_USER = """
import sys
from premem.errors import InputError
from premem.files import check_output
for path, kind in [(sys.argv[1] + "/out.jsonl", "file"), (sys.argv[1] + "/a/b/out.jsonl", "file"), (sys.argv[1], "dir")]:
    try:
        check_output(path, kind=kind)
        print("accepted", path)
    except InputError as e:
        print(e)
"""


def test_a_parent_that_cannot_be_written():
    # root writes through directory permissions, so as root the check runs as nobody
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    if as_nobody and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv to drop to another user")
    base = tempfile.mkdtemp(prefix="premem-perm-")  # not under pytest's tmp_path, which only root may enter
    try:
        os.chmod(base, 0o755)
        locked = os.path.join(base, "locked")
        os.mkdir(locked, 0o555)
        os.chmod(locked, 0o555)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([*as_nobody, sys.executable, "-c", CHECK_AS_USER, locked], capture_output=True,
                              text=True, env=env, cwd=base)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert len(lines) == 3 and all(f"cannot write in {locked} (permission denied)" in line for line in lines), lines
        assert os.listdir(locked) == []
    finally:
        os.chmod(os.path.join(base, "locked"), 0o755)
        shutil.rmtree(base)


# -- leftovers of killed writers --------------------------------------------------------------

WRITER = """
import sys, time
from pathlib import Path
from premem.files import atomic_path, staged_dir
dest = Path(sys.argv[1])
with (staged_dir(dest) if sys.argv[2] == "dir" else atomic_path(dest)) as tmp:
    (tmp / "part" if sys.argv[2] == "dir" else tmp).write_text("half")
    print(tmp, flush=True)
    time.sleep(600)
"""


NEXT_RUN = """
import sys
from pathlib import Path
from premem.files import atomic_path, staged_dir
dest = Path(sys.argv[1])
with (staged_dir(dest) if sys.argv[2] == "dir" else atomic_path(dest)) as tmp:
    (tmp / "part" if sys.argv[2] == "dir" else tmp).write_text("whole")
"""


def start_writer(dest, kind):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(dest), kind], stdout=subprocess.PIPE, text=True)
    tmp = proc.stdout.readline().strip()
    assert tmp, "the writer did not start"
    return proc, tmp


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_killed_writers_temporary_is_removed_by_the_next_write_and_a_live_ones_is_not(tmp_path, kind):
    dest = tmp_path / ("out.jsonl" if kind == "file" else "curated")
    live, live_tmp = start_writer(dest, kind)
    killed, killed_tmp = start_writer(dest, kind)  # it leaves the live writer's temporary alone
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    try:
        other = tmp_path / f".other.{os.path.basename(killed_tmp).split('.', 3)[-1]}"  # another destination's
        other.write_text("x")
        assert os.path.exists(killed_tmp) and os.path.exists(live_tmp)
        next_run = subprocess.run([sys.executable, "-c", NEXT_RUN, str(dest), kind])
        assert next_run.returncode == 0
        assert not os.path.exists(killed_tmp)  # the dead writer's leftover is gone
        assert os.path.exists(live_tmp)  # the running writer's is not touched
        assert other.exists()
        assert (dest / "part" if kind == "dir" else dest).read_text() == "whole"
    finally:
        live.kill()
        live.wait()


def test_leftovers_whose_owner_cannot_be_asked_go_only_when_a_day_old(tmp_path):
    dest = tmp_path / "table.parquet"
    fresh = tmp_path / ".table.parquet.abcd1234.tmp"  # named before owners were recorded
    old = tmp_path / ".table.parquet.zzzz9999.tmp"
    elsewhere = tmp_path / ".table.parquet.0123abcd-1.q1w2e3r4.tmp"  # another host (its hash is not ours)
    for p in (fresh, old, elsewhere):
        p.write_text("x")
    day_ago = time.time() - 25 * 3600
    os.utime(old, (day_ago, day_ago))
    removed = remove_stale_temps(dest)
    assert removed == [old]
    assert fresh.exists() and elsewhere.exists()


def test_an_earlier_output_moved_aside_by_a_killed_replace_is_put_back(tmp_path):
    out = tmp_path / "probes"
    aside = tmp_path / ".probes.abcdefgh.old"
    (aside / "out").mkdir(parents=True)
    (aside / "out" / "probes.jsonl").write_text("earlier")
    os.utime(aside, (0, 0))
    remove_stale_temps(out)
    assert (out / "probes.jsonl").read_text() == "earlier"
    assert not aside.exists()


def test_a_dead_owners_leftover_goes_only_if_untouched_since_this_run_started(tmp_path):
    from premem.files import _host

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    dest = tmp_path / "out.jsonl"
    before_run = tmp_path / f".out.jsonl.{_host()}-{pid}.abcdefgh.tmp"
    during_run = tmp_path / f".out.jsonl.{_host()}-{pid}.hgfedcba.tmp"  # e.g. a writer in another pid namespace
    before_run.write_text("x")
    during_run.write_text("x")
    os.utime(before_run, (time.time() - 3600, time.time() - 3600))
    assert remove_stale_temps(dest) == [before_run]
    assert during_run.exists()
