"""Atomic writes: a writer killed mid-write leaves a hidden temporary; the next write
into that folder deletes it, and keeps the temporaries of live writers and other hosts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from fusionseg.data import io


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_kill_9_mid_write_leftover_is_swept_by_the_next_write(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from fusionseg.data.io import atomic_path
        with atomic_path(Path({str(tmp_path)!r}) / "summary.json") as tmp:
            tmp.write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -9
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".summary.json.~"), leftovers
    with io.atomic_path(tmp_path / "summary.json") as tmp:
        tmp.write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    assert (tmp_path / "summary.json").read_text() == "whole"


def test_live_and_foreign_temporaries_are_kept(tmp_path):
    dead = _dead_pid()
    host = io.temp_prefix("x").split("~")[1].rsplit("-", 1)[0]
    stale_file = tmp_path / f".metrics_per_case.csv.~{host}-{dead}.abc.csv"
    stale_dir = tmp_path / f".Brats18_1.~{host}-{dead}.q1w2"
    live = tmp_path / f".metrics_per_case.csv.~{host}-{os.getppid()}.def.csv"
    foreign = tmp_path / f".metrics_per_case.csv.~otherhost-{dead}.ghi.csv"
    unrelated = tmp_path / ".hidden.~notes"
    for path in (stale_file, live, foreign, unrelated):
        path.write_text("x")
    stale_dir.mkdir()
    (stale_dir / "image.npy").write_text("x")
    with io.atomic_path(tmp_path / "metrics_per_case.csv") as tmp:
        tmp.write_text("a,b\n")
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"metrics_per_case.csv", live.name, foreign.name, unrelated.name}
    # once per folder and process: a later leftover waits for the next process
    stale_file.write_text("x")
    with io.atomic_path(tmp_path / "metrics_per_case.csv") as tmp:
        tmp.write_text("a,b\n")
    assert stale_file.exists()


def test_host_names_with_dots_and_dashes_parse():
    m = io._TEMP_NAME.match(".fold_0.ckpt.~node_3-12345.a1b2.ckpt")
    assert m is not None and m["host"] == "node_3" and m["pid"] == "12345"
    m = io._TEMP_NAME.match(f"{io.temp_prefix('last.ckpt')}zz.ckpt")
    assert m is not None and int(m["pid"]) == os.getpid()
