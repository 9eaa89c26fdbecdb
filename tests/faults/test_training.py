"""Fault injection for the training commands (issue 24): one run per folder, a checkpoint and a
clean stop on SIGTERM/SIGINT that resumes bitwise (stages 1 and 2, each baseline, two
processes), non-finite losses stopped or skipped, a full disk, damaged checkpoints skipped for
the newest intact one.

Elsewhere: a kill -9 and resume per trainer (its own test module), a rank whose batch is all
unreadable (tests/test_train_encoders.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import scldm.training.encoders as encoders
from scldm.cli import main
from scldm.errors import InputError
from scldm.training.guard import LOCK, RunGuard
from test_train_encoders import TINY, _assert_equal, _cli, _weights, data  # noqa: F401


def _pretrain(data, out, *extra: str) -> int:  # noqa: F811
    return main(["pretrain", "--data", str(data), "--out", str(out), *TINY, *extra])


def test_a_second_run_in_the_same_folder_is_refused_and_a_killed_run_leaves_no_lock(tmp_path):
    run = tmp_path / "run"
    with RunGuard(run):
        with pytest.raises(InputError, match=f"in use by another run \\(process {os.getpid()}\\)"):
            with RunGuard(run):
                pass
    with RunGuard(run):  # released on exit
        pass
    # a run killed with SIGKILL (no cleanup at all) does not leave the folder locked
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from scldm.training.guard import RunGuard; g = RunGuard(Path(sys.argv[1])).__enter__(); "
         "print('locked', flush=True); time.sleep(60)", str(run)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(InputError, match=f"process {holder.pid}"):
        RunGuard(run).__enter__()
    holder.kill()
    holder.wait()
    with RunGuard(run):
        assert (run / LOCK).read_text().strip() == str(os.getpid())


def test_pretrain_into_a_folder_in_use_exits_2_with_one_line(data, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    with RunGuard(run):
        assert _pretrain(data, run) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is in use by another run" in err[0]
    assert not (run / "checkpoints").exists()


def _signal_at_call(monkeypatch, n: int, signum: int) -> None:
    """Send this process `signum` during the n-th stage-1 loss (step n, counted from 1)."""
    calls, loss_fn = [], encoders.encoder_stage_loss

    def loss_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signum)
        return loss_fn(*args, **kwargs)

    monkeypatch.setattr(encoders, "encoder_stage_loss", loss_then_signal)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_checkpoints_the_current_step_and_resume_equals_a_straight_run(
    data,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
    signum,
):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert _pretrain(data, straight) == 0  # 4 steps, checkpoints at 2 and 4
    _signal_at_call(monkeypatch, 3, signum)
    assert _pretrain(data, stopped) == 128 + signum
    err = capsys.readouterr().err.strip().splitlines()
    name = signal.Signals(signum).name
    assert err[-1].startswith(f"scldm: stopped by {name} after step 3; checkpoint ")
    assert err[-1].endswith("step_0000003 written; continue with --resume latest")
    assert json.loads((stopped / "checkpoints/step_0000003/state.json").read_text())["step"] == 3
    assert not (stopped / "export").exists()
    # the handlers are the previous ones again once the run is over
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    args = ["pretrain", "--data", str(data), "--out", str(stopped), *TINY, "--resume", "latest"]
    done = _cli(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    final = "checkpoints/step_0000004"
    _assert_equal(_weights(straight / final), _weights(stopped / final))


def test_a_stop_signal_to_a_running_process_exits_143_with_a_checkpoint(data, tmp_path):  # noqa: F811
    # the real thing: SIGTERM from outside, at whatever step the run has reached, to the whole
    # process group as a scheduler sends it (the loader worker too, which leaves it to the main
    # process)
    run = tmp_path / "run"
    args = [sys.executable, "-m", "scldm", "pretrain", "--data", str(data), "--out", str(run)]
    args += [*TINY, "--set", "train.max_steps=100000", "--set", "train.log_every=1"]
    args += ["--set", "data.num_workers=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        args, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    deadline = time.time() + 120
    while not ((run / "scalars.jsonl").is_file() and (run / "scalars.jsonl").read_text()):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # a hung run must not outlive the test
        _, err = proc.communicate()
        pytest.fail("no exit 120 s after SIGTERM; its stderr ends:\n" + err[-3000:])
    assert proc.returncode == 143, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("scldm: stopped by SIGTERM after step ")
    step = int(last.split("after step ")[1].split(";")[0])
    assert (run / "checkpoints" / f"step_{step:07d}" / "digest.json").is_file()


def _signal_mask(pid: int, field: str) -> int:
    """A process's SigBlk or SigIgn bits (/proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(field)


def _alive(pid: int) -> bool:
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_loader_worker_survives_a_group_stop_signal_and_ends_when_its_parent_ends_it(tmp_path):
    # CI: a worker born just as SIGTERM reached the process group died of it (the run ended
    # without a checkpoint), and the training loader's worker, which ignored SIGTERM, hung the
    # exit for ever: multiprocessing terminates a parent's workers at exit and joins them
    import multiprocessing as mp

    from scldm.training.guard import guarded

    loader = torch.utils.data.DataLoader(range(8), batch_size=2, num_workers=1)

    def train(cfg):
        it = iter(loader)
        next(it)
        (worker,) = [p for p in mp.active_children() if p.daemon]
        # born with the stop signals blocked; the parent's mask is as before
        stop = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1))
        assert _signal_mask(worker.pid, "SigBlk") & stop == stop
        assert _signal_mask(os.getpid(), "SigBlk") & stop == 0
        # a SIGTERM from anyone but its parent (a scheduler's, to the process group): ignored
        subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)
        subprocess.run(["kill", "-INT", str(worker.pid)], check=True)
        time.sleep(0.5)
        assert _alive(worker.pid)
        assert next(it).tolist() == [2, 3]  # and it still serves batches
        # its parent's SIGTERM (multiprocessing's terminate, as at exit) ends it
        worker.terminate()
        worker.join(timeout=10)
        assert worker.exitcode == 0
        del it
        return tmp_path

    class Cfg:
        class train:
            output_dir = tmp_path / "run"
            skip_nonfinite = 0

    guarded(train)(Cfg)
    # outside a run, forks are left alone
    it = iter(loader)
    next(it)
    (worker,) = [p for p in mp.active_children() if p.daemon]
    assert _signal_mask(worker.pid, "SigBlk") & (1 << (signal.SIGTERM - 1)) == 0
    del it


def _nan_at_call(monkeypatch, n: int) -> None:
    """Make the n-th stage-1 loss NaN."""
    calls, loss_fn = [], encoders.encoder_stage_loss

    def loss(*args, **kwargs):
        calls.append(1)
        value, logs = loss_fn(*args, **kwargs)
        return (value * float("nan"), logs) if len(calls) == n else (value, logs)

    monkeypatch.setattr(encoders, "encoder_stage_loss", loss)


def test_a_nan_loss_stops_stage_1_naming_the_step_and_the_last_good_checkpoint(
    data,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
):
    run = tmp_path / "run"
    _nan_at_call(monkeypatch, 3)
    assert _pretrain(data, run) == 1
    err = capsys.readouterr().err.strip().splitlines()  # the progress bar's, then one line
    assert [line for line in err if line.startswith("scldm")] == err[-1:]
    assert err[-1].startswith("scldm: error: pretrain: loss = nan at step 3; training stopped;")
    assert "the last good checkpoint is " in err[-1] and "step_0000002" in err[-1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000002"]


def test_skip_nonfinite_skips_the_update_and_the_run_finishes(data, tmp_path, monkeypatch, caplog):  # noqa: F811
    straight, skipped = tmp_path / "straight", tmp_path / "skipped"
    assert _pretrain(data, straight, "--set", "train.max_steps=2") == 0
    _nan_at_call(monkeypatch, 3)
    assert _pretrain(data, skipped, "--set", "train.skip_nonfinite=1") == 0
    assert "its update is skipped (1 of train.skip_nonfinite = 1)" in caplog.text
    w2 = _weights(skipped / "checkpoints/step_0000002")
    _assert_equal(_weights(straight / "checkpoints/step_0000002"), w2)
    w4 = _weights(skipped / "checkpoints/step_0000004")["model"]
    assert all(torch.isfinite(v).all() for v in w4.values())


def test_a_checkpoint_that_cannot_be_written_stops_in_one_line_and_keeps_the_last_one(
    data,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
):
    """Disk full while saving step 4: exit 1, one line naming the intact step 2, no leftovers."""
    import errno

    import scldm.training.checkpoint as checkpoint

    save_file, calls = checkpoint.save_file, []

    def fill_up(tensors, path, *args, **kwargs):
        calls.append(path)
        if "step_0000004" in str(path) and "ema" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return save_file(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", fill_up)
    run = tmp_path / "run"
    assert _pretrain(data, run) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith("scldm")] == err[-1:]
    assert err[-1].startswith("scldm: error: could not write the checkpoint of step 4 to ")
    assert err[-1].endswith(
        f"(No space left on device); the last checkpoint, {run}/checkpoints/step_0000002, is intact"
    )
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_0000002"]
    assert checkpoint.damage(run / "checkpoints" / "step_0000002") is None


def test_sigterm_during_stage_2_checkpoints_and_resume_equals_a_straight_run(
    tiny_stage1, tmp_path, monkeypatch, capsys
):
    import scldm.training.diffusion as diffusion

    sv, enc = tiny_stage1
    base = ["train", "--encoders", str(enc), "--data", str(sv), "--config", "tiny"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main([*base, "--out", str(straight)]) == 0  # 4 steps, checkpoints at 2 and 4
    calls, loss_fn = [], diffusion.diffusion_loss

    def loss_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss_fn(*args, **kwargs)

    monkeypatch.setattr(diffusion, "diffusion_loss", loss_then_signal)
    capsys.readouterr()
    assert main([*base, "--out", str(stopped)]) == 143
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("scldm: stopped by SIGTERM after step 3; checkpoint ")
    assert not (stopped / "pipeline").exists()
    done = _cli(*base, "--out", str(stopped), "--resume", "latest")
    assert done.returncode == 0, done.stderr[-2000:]
    final = "checkpoints/step_0000004"
    _assert_equal(_weights(straight / final), _weights(stopped / final))


@pytest.mark.slow  # two CPU processes through `accelerate launch`
def test_sigterm_to_two_processes_stops_both_at_one_step_with_a_checkpoint(data, tmp_path):  # noqa: F811
    """A scheduler's SIGTERM to the whole process group of a 2-process run: the ranks agree on
    the step to stop at, one checkpoint holds both ranks' RNG states, nobody hangs; resuming
    with 2 processes finishes."""
    run = tmp_path / "ddp"
    args = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
            "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", "scldm", "pretrain", "--data", str(data), "--out", str(run), *TINY, "--cpu",
            "--set", "train.log_every=1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    long = ["--set", "train.max_steps=100000"]
    proc = subprocess.Popen([*args, *long], stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while not ((run / "scalars.jsonl").is_file() and (run / "scalars.jsonl").read_text()):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert "stopped by SIGTERM after step " in err, err[-3000:]
    step = int(err.split("stopped by SIGTERM after step ")[1].split(";")[0])
    checkpoint = run / "checkpoints" / f"step_{step:07d}"
    assert {"rng_0.safetensors", "rng_1.safetensors", "digest.json"} <= {
        p.name for p in checkpoint.iterdir()
    }
    done = _cli("pretrain", "--data", str(data), "--out", str(run), *TINY, "--cpu",
                "--set", f"train.max_steps={step + 2}", "--resume", "latest", nproc=2)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "checkpoints" / f"step_{step + 2:07d}").is_dir()


@pytest.mark.parametrize(
    ("method", "phase", "parts"),
    [
        ("speech2face", "voice", ("model", "ema")),
        ("wen", "gan", ("model", "ema", "discriminator", "discriminator_optimizer")),
        ("wav2pix", "gan", ("model", "ema", "discriminator", "discriminator_optimizer")),
    ],
)
def test_sigterm_during_a_baseline_checkpoints_and_resume_equals_a_straight_run(
    synthvox30, tmp_path, monkeypatch, capsys, method, phase, parts
):
    """SIGTERM in step 3 of each baseline's last phase (the GAN loop for Wen et al. and
    Wav2Pix): exit 143 with a checkpoint at step 3 and no pipeline; `--resume latest` in a fresh
    process ends with the weights, optimizers and state of an uninterrupted run, bitwise."""
    base = ["train-baseline", method, "--data", str(synthvox30), *TINY]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main([*base, "--out", str(straight)]) == 0  # 4 steps a phase, checkpoints at 2, 4
    finite = RunGuard.finite

    def signal_in_step_3(self, losses, step, name, checkpoints):
        if name == phase and step == 2 and self.signum is None:
            os.kill(os.getpid(), signal.SIGTERM)
        return finite(self, losses, step, name, checkpoints)

    monkeypatch.setattr(RunGuard, "finite", signal_in_step_3)
    capsys.readouterr()
    assert main([*base, "--out", str(stopped)]) == 143
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        f"scldm: stopped by SIGTERM after step 3; checkpoint {stopped / phase}/checkpoints/"
        "step_0000003 written; continue with --resume latest"
    )
    assert not (stopped / "pipeline").exists()
    done = _cli(*base, "--out", str(stopped), "--resume", "latest")
    assert done.returncode == 0, done.stderr[-2000:]
    final = f"{phase}/checkpoints/step_0000004"
    for part in parts:
        a = load_file(straight / final / f"{part}.safetensors")
        b = load_file(stopped / final / f"{part}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    state = json.loads((stopped / final / "state.json").read_text())
    assert state == json.loads((straight / final / "state.json").read_text())


def test_a_damaged_checkpoint_is_skipped_for_the_newest_intact_one(tmp_path, caplog):
    """Step 2's weights cut short (a disk or a copy that failed): --resume latest warns in one
    line and resumes from step 1; naming step 2 itself is a one-line error."""
    import torch
    from accelerate import Accelerator

    from scldm.errors import InputError
    from scldm.optim import EMA
    from scldm.training.checkpoint import resolve_resume, save_checkpoint
    from scldm.training.loop import TrainState

    accelerator, model = Accelerator(cpu=True), torch.nn.Linear(3, 2)
    optimizer, ema = torch.optim.AdamW(model.parameters()), EMA(model, 0.9)
    for step in (1, 2):
        state = TrainState(step=step)
        save_checkpoint(
            accelerator, tmp_path, model=model, optimizer=optimizer, ema=ema, state=state,
            keep_last=2,
        )  # fmt: skip
    step1, step2 = sorted((tmp_path / "checkpoints").iterdir())
    assert resolve_resume(tmp_path, "latest") == step2 and (step2 / "digest.json").is_file()
    weights = step2 / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    assert resolve_resume(tmp_path, "latest") == step1
    assert "skipping the damaged checkpoint" in caplog.text and "model.safetensors" in caplog.text
    with pytest.raises(InputError, match="damaged checkpoint: model.safetensors does not match"):
        resolve_resume(tmp_path, str(step2))
