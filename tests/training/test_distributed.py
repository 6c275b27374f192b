"""Distributed training: two gloo processes on CPU are one process with the same global batch.

The loss per rank is ``world_size * BCE_local - Dice_global`` (the Dice sums all-reduced with their gradient),
so after DDP averages the gradients they equal those of one process that sees the whole global batch; the
logged loss (sum over ranks / world size) equals that process's loss.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from multitalent import objectives
from multitalent.data.loader import PatchBatches
from multitalent.data.targets import batch_to_device
from multitalent.errors import UserInputError
from multitalent.loss import MultiTalentLoss, deep_supervision_weights
from multitalent.models import create_model, deep_supervision_scales
from multitalent.preprocessing.pipeline import Preprocessed, run_preprocessing
from multitalent.training import checkpoint, distributed, loop
from multitalent.training.checkpoint import load_checkpoint
from multitalent.training.config import TrainConfig
from multitalent.training.distributed import DistInfo

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is needed")

GLOBAL_BATCH = 4
TOL = 1e-5


@pytest.fixture
def pre(tiny_collection, tmp_path) -> Preprocessed:
    out = run_preprocessing(tiny_collection, tmp_path / "pre", preset="small", spacing=(2.0, 2.0, 2.0),
                            patch_size=(16, 32, 32), workers=1, progress=False)
    return Preprocessed.open(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_step(pre_root: str, info: DistInfo) -> dict:
    """Steps as the loop takes them: a skipped step (forward, no backward), a step of a phase that trains
    only the output convolutions (fine-tuning's first phase), then, DDP built again, a step that trains
    everything. Returns the reported loss and the gradients of the last two steps."""
    pre = Preprocessed.open(pre_root)
    heads = len(pre.registry)
    torch.manual_seed(0)
    model = create_model("plain_unet", pre.plans, heads, deep_supervision=True, base_features=4)
    scales = deep_supervision_scales(pre.plans)
    weights = deep_supervision_weights(len(scales))
    assert weights[-1] == 0  # the lowest output is not in the loss: DDP must cope with unused parameters
    used = len(scales) - 1
    data = PatchBatches(pre, [c["case"] for c in pre.cases], GLOBAL_BATCH, pre.plans.patch_size, scales[:used],
                        seed=5, rank=info.rank, world_size=info.world_size)
    loss_fn = MultiTalentLoss(ds_weights=weights[:used], sum_fn=distributed.all_reduce_sum if info.enabled else None)

    def step(net: torch.nn.Module, iteration: int) -> torch.Tensor:
        batch = batch_to_device(data[iteration], torch.device("cpu"))
        loss = objectives.loss_on_batch(net(batch["image"]), batch, loss_fn, heads, bce_scale=info.world_size)
        loss.backward()
        return loss.detach()

    def grads() -> dict:
        out = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return out

    head_params = {id(p) for h in model.heads() for p in h.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in head_params)
    net = distributed.wrap_ddp(model, info, torch.device("cpu"), keep_outputs=used)
    net(data[0]["image"])  # a skipped step: the loop calls no backward after a non-finite loss
    step(net, 1)
    head_grads = grads()

    model.requires_grad_(True)  # the next phase trains all parameters: DDP must be built again
    del net
    net = distributed.wrap_ddp(model, info, torch.device("cpu"), keep_outputs=used)
    loss = step(net, 2)
    # the loop logs the sum over ranks / world size
    reported = float(distributed.reduce_detached(loss, info)) / info.world_size
    return {"loss": reported, "grads": grads(), "head_grads": head_grads}


def _rank_main(rank: int, world: int, port: int, pre_root: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    info = distributed.init_distributed("cpu", timeout_s=120)
    try:
        torch.save(_train_step(pre_root, info), Path(out_dir) / f"rank{rank}.pt")
    finally:
        distributed.cleanup(info)


def _assert_grads_close(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name, g in expected.items():
        if g is None:  # the lowest deep-supervision output; in the heads phase also the backbone
            assert actual[name] is None, name
        else:
            assert actual[name] is not None, name
            torch.testing.assert_close(actual[name], g, rtol=TOL, atol=TOL, msg=name)


@pytest.mark.slow
def test_two_processes_give_the_loss_and_gradients_of_one(pre, tmp_path):
    torch.set_num_threads(1)
    single = _train_step(str(pre.root), DistInfo())
    mp.start_processes(_rank_main, args=(2, _free_port(), str(pre.root), str(tmp_path)), nprocs=2,
                       start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert sum(g is None for g in single["grads"].values()) == 2  # weight and bias of the unused output
    for res in ranks:
        assert res["loss"] == pytest.approx(single["loss"], rel=TOL, abs=TOL)
        _assert_grads_close(res["grads"], single["grads"])
        _assert_grads_close(res["head_grads"], single["head_grads"])


def _torchrun(args: list[str], env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


# runs `multitalent` under torchrun; the rank in $FAIL_RANK raises (or, with FAIL_MODE=hang, stops answering)
# after its FAIL_AT-th loss computation
RUNNER = """
import os, sys, time
from multitalent import objectives
if os.environ.get("FAIL_RANK") == os.environ["RANK"]:
    real, calls = objectives.loss_on_batch, []
    def failing(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == int(os.environ["FAIL_AT"]):
            if os.environ.get("FAIL_MODE") == "hang":
                print("rank " + os.environ["RANK"] + " hangs", flush=True)
                time.sleep(3600)
            raise RuntimeError("injected failure on rank " + os.environ["RANK"])
        return loss
    objectives.loss_on_batch = failing
from multitalent.cli import main
sys.exit(main(sys.argv[1:]))
"""

TRAIN_ARGS = ["--epochs", "2", "--iterations-per-epoch", "2", "--val-iterations", "1", "--base-features", "4",
              "--batch-size", str(GLOBAL_BATCH), "--fold", "all", "--num-workers", "0", "--device", "cpu",
              "--seed", "3"]


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_torchrun_training_fails_fast_resumes_and_matches_one_process(pre, tmp_path, monkeypatch):
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    run = tmp_path / "ddp"
    args = [str(runner), "-q", "train", str(pre.root), "-o", str(run), *TRAIN_ARGS]

    # rank 1 dies in the first step of epoch 2, after rank 0 wrote the epoch-1 checkpoint; rank 0 is then
    # waiting in a collective and must be ended too, quickly, not after the collective timeout
    start = time.monotonic()
    crashed = _torchrun(args, env={"FAIL_RANK": "1", "FAIL_AT": "4", "MULTITALENT_DIST_TIMEOUT": "300"})
    elapsed = time.monotonic() - start
    assert crashed.returncode != 0
    assert "injected failure on rank 1" in crashed.stdout + crashed.stderr
    assert elapsed < 120, f"the surviving rank was not ended promptly ({elapsed:.0f} s)"
    after_epoch1 = load_checkpoint(run / "checkpoint_latest.pt")
    assert after_epoch1.iteration == 2 and not (run / "checkpoint_final.pt").exists()

    resumed = _torchrun([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = load_checkpoint(run / "checkpoint_final.pt")
    assert final.iteration == 4 and final.run["world_size"] == 2
    log = _log(run)
    assert [r["epoch"] for r in log] == [0, 1]  # one writer: no line twice
    assert not list(run.glob(".*"))  # no temporary files left behind

    # the same training in one process, with the same global batch
    cfg = TrainConfig(epochs=2, iterations_per_epoch=2, val_iterations=1, base_features=4, batch_size=GLOBAL_BATCH,
                      fold="all", num_workers=0, seed=3, quiet=True)
    saved = []
    writer = loop if hasattr(loop, "save_checkpoint") else checkpoint  # where the loop looks it up
    real_save = writer.save_checkpoint

    def keep(path, payload):
        saved.append({k: v.clone() for k, v in payload["state_dict"].items()})
        real_save(path, payload)

    monkeypatch.setattr(writer, "save_checkpoint", keep)
    ref = load_checkpoint(loop.train(pre.root, tmp_path / "single", cfg))
    ref_log = _log(tmp_path / "single")
    for k, v in ref.state_dict.items():
        torch.testing.assert_close(after_epoch1.state_dict[k], saved[0][k], rtol=TOL, atol=TOL, msg=k)
        torch.testing.assert_close(final.state_dict[k], v, rtol=TOL, atol=TOL, msg=k)
    for got, want in zip(log, ref_log):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-4)
        assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-4)


def _devices_with_two_ranks() -> list:
    return ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
        torch.cuda.device_count() < 2, reason="nccl needs two CUDA devices (one per rank)"))]


@pytest.mark.slow
@pytest.mark.parametrize("device", _devices_with_two_ranks())
def test_hanging_rank_is_ended_by_the_collective_timeout(pre, tmp_path, device):
    """Rank 1 stops answering inside a step (as with stuck I/O or a deadlock); rank 0 waits in the next
    collective until MULTITALENT_DIST_TIMEOUT, fails (gloo: an error; nccl: the watchdog aborts it), and
    torchrun then ends rank 1: the job ends shortly after the timeout instead of hanging."""
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    run = tmp_path / "ddp"
    args = [str(runner), "-q", "train", str(pre.root), "-o", str(run), *TRAIN_ARGS[:-4], "--device", device,
            *TRAIN_ARGS[-2:]]
    timeout = 20
    start = time.monotonic()
    hung = _torchrun(args, env={"FAIL_RANK": "1", "FAIL_AT": "2", "FAIL_MODE": "hang",
                                "MULTITALENT_DIST_TIMEOUT": str(timeout)})
    elapsed = time.monotonic() - start
    out = hung.stdout + hung.stderr
    assert hung.returncode != 0
    assert "rank 1 hangs" in out
    assert "timed out" in out.lower() or "timeout" in out.lower(), out[-3000:]
    # ended by the timeout (not earlier by something else), and promptly after it
    assert timeout <= elapsed < timeout + 90, f"the job took {elapsed:.0f} s with a {timeout} s collective timeout"
    assert not (run / "checkpoint_final.pt").exists()


def test_global_batch_must_split_evenly(pre, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "init_distributed", lambda device: DistInfo(rank=0, world_size=2))
    with pytest.raises(UserInputError, match="divisible by the 2 processes"):
        loop.train(pre.root, tmp_path / "r", TrainConfig(batch_size=3, fold="all", quiet=True))


def test_collective_timeout_from_environment(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.collective_timeout_s() == distributed.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "90")
    assert distributed.collective_timeout_s() == 90
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(UserInputError, match=distributed.TIMEOUT_ENV):
        distributed.collective_timeout_s()
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_distributed("cpu") == DistInfo()


# two ranks started by hand (no torchrun, so nobody ends the survivor with SIGTERM): rank 0 sums in a loop
# until its collective fails; rank 1 is killed with SIGKILL, or raises an error of its own
PAIR = """
import os, signal, sys, time
import torch
from multitalent.training import distributed
info = distributed.init_distributed("cpu", timeout_s=60)
try:
    try:
        if info.rank == 1:
            time.sleep(0.5)
            if os.environ["MODE"] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("rank 1 gives up")
        x = torch.ones(3, requires_grad=True)
        for _ in range(1200):
            distributed.all_reduce_sum(x * 2).sum().backward()
            time.sleep(0.05)
    finally:
        distributed.cleanup(info)
except Exception as e:
    print(type(e).__name__ + ": " + str(e).splitlines()[0], flush=True)
    sys.exit(1)
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["kill", "error"])
def test_a_collective_names_a_killed_rank_but_not_one_that_reported_its_own_error(mode):
    """The survivor's failed collective becomes a RankFailure naming the rank only when that rank vanished
    without a word (SIGKILL); a rank that stopped with its own error is left to speak for itself."""
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1",
               "MODE": mode}
        procs.append(subprocess.Popen([sys.executable, "-c", PAIR], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        out0, err0 = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        out1, _ = procs[1].communicate()
    assert procs[0].returncode == 1, err0[-2000:]
    if mode == "kill":
        assert procs[1].returncode == -signal.SIGKILL
        assert out0.startswith(f"RankFailure: training process rank 1 (pid {procs[1].pid}) ended unexpectedly"), out0
        assert "killed by signal 9 (SIGKILL)" in out0 and "--resume" in out0
    else:
        assert procs[1].returncode == 1 and "rank 1 gives up" in out1
        assert out0 and not out0.startswith("RankFailure"), out0


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _rank_pid(torchrun_pid: int, rank: int) -> int:
    for pid in _children(torchrun_pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    raise AssertionError(f"no process of rank {rank} under torchrun (pid {torchrun_pid})")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("workers", [0, 2])
def test_a_rank_killed_by_the_kernel_is_named_by_the_survivor(pre, tmp_path, workers):
    """Rank 1 is killed with SIGKILL in the middle of training, as the kernel's out-of-memory killer does: it
    prints nothing, torchrun ends rank 0 with SIGTERM, and rank 0 says in one line which rank died and what
    to do, instead of dying silently; the job ends within seconds (not after the collective timeout) and the
    last checkpoint is intact. With loader workers, torchrun's SIGTERM to the process group also ends them,
    and their death must not take the message's place."""
    run = tmp_path / "ddp"
    train_args = [*TRAIN_ARGS[2:]]
    train_args[train_args.index("--num-workers") + 1] = str(workers)
    args = ["-q", "train", str(pre.root), "-o", str(run), "--epochs", "300", *train_args, "--no-final-validation"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "multitalent",
           *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MULTITALENT_DIST_TIMEOUT": "300"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoint_latest.pt").exists():  # epoch 1 is saved: both ranks are training
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        victim = _rank_pid(proc.pid, 1)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        out, err = proc.communicate(timeout=120)
        elapsed = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    errors = [line for line in (out + err).splitlines() if line.startswith("multitalent: error:")]
    assert len(errors) == 1, (out + err)[-3000:]
    assert errors[0].startswith(f"multitalent: error: training process rank 1 (pid {victim}) ended unexpectedly")
    assert "rank 0 stops too" in errors[0] and "--resume" in errors[0]
    assert elapsed < 60, f"the job took {elapsed:.0f} s to end after rank 1 was killed"
    assert load_checkpoint(run / "checkpoint_latest.pt").iteration >= 2
    assert not (run / "checkpoint_final.pt").exists()


_SIGTERM_AFTER_CLEANUP = """
import os, signal, socket, subprocess, sys
import torch.distributed as dist
from multitalent.training import distributed as d

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
info = d.DistInfo(0, 2, 0)
d._watch_peers(info)
gone = subprocess.Popen(["true"])
gone.wait()
d._state["peers"][1] = d._Peer(1, d._here(), gone.pid, None)  # rank 1: killed, already reaped by torchrun
try:
    try:
        raise RuntimeError("Connection closed by peer")  # what gloo raises in rank 0's collective
    finally:
        d.cleanup(info)
except d.RankFailure as e:
    os.kill(os.getpid(), signal.SIGTERM)  # torchrun's SIGTERM for the dead rank arrives only now
    print("multitalent: error:", e, flush=True)
    sys.exit(1)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_torchruns_sigterm_after_cleanup_does_not_swallow_the_message():
    """A rank that saw its peer die in a collective reports it from ``cleanup``; torchrun's SIGTERM (sent
    when it notices the dead rank, a moment later) may arrive after cleanup stopped watching the peers. It
    must not end the process with SIGTERM's default before the message is printed (seen in CI: rank 0 ended
    by signal 15, no message)."""
    proc = subprocess.run([sys.executable, "-c", _SIGTERM_AFTER_CLEANUP], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.startswith("multitalent: error: training process rank 1 (pid "), proc.stdout
