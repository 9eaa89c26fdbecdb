"""The training loop's shared pieces: the logging window, the step cadence, the batch stream."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator

from scldm.errors import InputError
from scldm.training.loop import LogWindow, batch_stream, due


class _Bar:
    def __init__(self):
        self.postfix = None

    def set_postfix(self, **kwargs):
        self.postfix = kwargs


def test_the_log_window_reports_means_since_the_last_report(tmp_path):
    accelerator = Accelerator(cpu=True)
    bar = _Bar()
    window = LogWindow(accelerator, tmp_path, batch_size=8, bar=bar)
    for loss, mae in ((1.0, 0.5), (3.0, 1.5)):  # tensors (with grad) and numbers both count
        window.add({"loss": torch.tensor(loss, requires_grad=True), "loss/mae": mae})
    assert all(v.device == accelerator.device for v in window.sums.values())  # not on the host
    window.report(step=2, lr=1e-3)
    window.add({"loss": 10.0, "loss/mae": 0.0})
    window.report(step=3, lr=5e-4)
    rows = [json.loads(line) for line in (tmp_path / "scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3]
    assert rows[0]["train/loss"] == pytest.approx(2.0) and rows[0]["train/mae"] == 1.0
    assert rows[1]["train/loss"] == pytest.approx(10.0) and rows[1]["train/lr"] == 5e-4
    assert rows[0]["train/samples_per_sec"] > 0 and bar.postfix["loss"] == "10"


def test_due_every_n_steps_and_at_the_end():
    assert [s for s in range(1, 12) if due(s, 4, 11)] == [4, 8, 11]
    assert [s for s in range(1, 12) if due(s, 4)] == [4, 8]
    assert [s for s in range(1, 12) if due(s, 0, 11)] == [11]  # 0: only at the end


class _Sampler:
    def __init__(self):
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)


def test_batch_stream_resumes_inside_an_epoch():
    accelerator = Accelerator(cpu=True)
    loader = torch.utils.data.DataLoader(list(range(6)), batch_size=2)  # 3 batches an epoch
    sampler = _Sampler()
    stream = batch_stream(loader, sampler, start_step=4, accelerator=accelerator)
    got = [next(stream).tolist() for _ in range(3)]
    assert got == [[2, 3], [4, 5], [0, 1]]  # epoch 1 after its first batch, then epoch 2
    assert sampler.epochs == [1, 2]
    empty = torch.utils.data.DataLoader([], batch_size=2)
    with pytest.raises(InputError, match="no batch"):
        next(batch_stream(empty, sampler, 0, accelerator))


def test_resuming_drops_the_rows_logged_after_the_checkpoint(tmp_path):
    """A run killed at step 7 after its checkpoint of step 5 logged steps 6 and 7 (the last
    row cut short); resumed from step 5 it logs them again: trimming keeps each step once."""
    from accelerate import Accelerator

    from scldm.training.loop import trim_scalars

    rows = [json.dumps({"step": s, "train/loss": 1.0 / s}) for s in range(1, 8)]
    (tmp_path / "scalars.jsonl").write_text("\n".join(rows) + '\n{"step": 8, "tra')
    trim_scalars(Accelerator(cpu=True), tmp_path, 5)
    kept = [json.loads(line) for line in (tmp_path / "scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in kept] == [1, 2, 3, 4, 5] and kept[4]["train/loss"] == 0.2
