"""Job logs: every attempt of a job appends to its log, after a line that marks the new attempt, even
though Snakemake deletes the log before each attempt. (Through Snakemake and a real Slurm, with the
profile's retries: tests/test_slurm.py.)"""

from __future__ import annotations

import os
import re
import socket
import sys

from sailflow.logs import log_to

SEPARATOR = re.compile(r"===== (\S+) new attempt \((.+), pid (\d+)\) =====")


def _attempt(path, text, monkeypatch):
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # restored after the test: log_to replaces both
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    f = log_to(str(path))
    try:
        print(text)
        print(f"{text} (stderr)", file=sys.stderr)
    finally:
        f.close()


def test_a_retry_appends_after_a_separator(tmp_path, monkeypatch):
    log = tmp_path / "job.log"
    _attempt(log, "attempt 1", monkeypatch)
    assert log.read_text() == "attempt 1\nattempt 1 (stderr)\n"  # the first attempt: no separator

    log.unlink()  # what Snakemake does before every attempt (Job.remove_existing_output)
    _attempt(log, "attempt 2", monkeypatch)
    _attempt(log, "attempt 3", monkeypatch)  # a rerun that found the log in place
    lines = log.read_text().splitlines()
    assert lines[:2] == ["attempt 1", "attempt 1 (stderr)"]
    for i, n in ((2, 2), (5, 3)):
        m = SEPARATOR.fullmatch(lines[i])
        assert m, lines[i]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", m.group(1))  # ISO time with its zone
        assert m.group(2) == socket.gethostname() and int(m.group(3)) == os.getpid()
        assert lines[i + 1 : i + 3] == [f"attempt {n}", f"attempt {n} (stderr)"]
    assert len(lines) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == [".job.log.attempts", "job.log"]  # one file, two names
    assert os.path.samefile(log, tmp_path / ".job.log.attempts")


def test_an_empty_log_gets_no_separator(tmp_path, monkeypatch):
    log = tmp_path / "job.log"
    log.touch()  # a shell redirect may create the file before the script runs
    _attempt(log, "only", monkeypatch)
    assert log.read_text() == "only\nonly (stderr)\n"


def test_a_log_replaced_by_another_file_is_kept_from_then_on(tmp_path, monkeypatch):
    log = tmp_path / "job.log"
    _attempt(log, "old", monkeypatch)
    log.unlink()
    log.write_text("written by someone else\n")  # not the kept file: it wins, and is kept from now on
    _attempt(log, "new", monkeypatch)
    lines = log.read_text().splitlines()
    assert lines[0] == "written by someone else" and SEPARATOR.fullmatch(lines[1]) and lines[2] == "new"
    assert os.path.samefile(log, tmp_path / ".job.log.attempts")
