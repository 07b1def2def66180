"""The torchrun entry shared by every multi-process trainer (``sailflow.gpu.torchrun_entry``), run under a
real torchrun with two CPU processes (gloo)."""
import json
import os
import subprocess
import sys
from pathlib import Path

PROGRAM = '''
import atexit
import os
from pathlib import Path

import torch
import torch.distributed as dist

from sailflow.gpu import init_distributed, torchrun_entry


def train(args):
    rank, world, _ = init_distributed()
    total = torch.tensor([rank + 1.0])
    dist.all_reduce(total)
    Path(args["out"], f"rank{rank}.txt").write_text(f"{world} {total.item()}")
    print(f"rank {rank} finished")
    if args["fail"]:
        raise RuntimeError(f"rank {rank} failed")
    atexit.register(os.abort)  # stands for gloo threads that abort while the interpreter shuts down


torchrun_entry(train)
'''


def _run(tmp_path: Path, fail: bool) -> subprocess.CompletedProcess:
    (tmp_path / "program.py").write_text(PROGRAM)
    (tmp_path / "args.json").write_text(json.dumps({"out": str(tmp_path), "fail": fail}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "program.py"), str(tmp_path / "args.json")],
                          capture_output=True, text=True, env=env, timeout=300)


def test_a_finished_training_exits_0_even_if_the_interpreter_would_abort_on_shutdown(tmp_path):
    """Both ranks return from ``train``: the job succeeds (Snakemake keeps its outputs) although finalization
    would abort, what each rank wrote is there and its output reached the log."""
    res = _run(tmp_path, fail=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["2 3.0", "2 3.0"]
    assert "rank 0 finished" in res.stdout and "rank 1 finished" in res.stdout


def test_a_failed_training_still_fails(tmp_path):
    res = _run(tmp_path, fail=True)
    assert res.returncode != 0
    assert "rank 0 failed" in res.stderr or "rank 1 failed" in res.stderr


SHOW_THREADS = '''
import json
import os
import sys
from pathlib import Path

import torch

args = json.loads(Path(sys.argv[1]).read_text())
Path(args["out"], f"threads{os.environ['RANK']}.json").write_text(json.dumps([os.environ["OMP_NUM_THREADS"], torch.get_num_threads()]))
'''


def test_launch_shares_the_jobs_threads_among_its_processes(tmp_path, monkeypatch):
    """Snakemake gives a job OMP_NUM_THREADS = its threads; torchrun's two processes get half each, not all each."""
    from sailflow.gpu import launch

    (tmp_path / "show_threads.py").write_text(SHOW_THREADS)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.setenv("SAILFLOW_FAKE_GPU_COUNT", "2")
    monkeypatch.setenv("SAILFLOW_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the claim sets it in this process: undone after the test
    with open(tmp_path / "launch.log", "w") as log:
        claim = launch("show_threads", {"out": str(tmp_path)}, 2, tmp_path / "args.json", log)
    claim.release()
    assert claim.ids == [0, 1], (tmp_path / "launch.log").read_text()
    assert [json.loads((tmp_path / f"threads{r}.json").read_text()) for r in (0, 1)] == [["2", 2], ["2", 2]]
