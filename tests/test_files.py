"""The one atomic writer (rdd.files.write_atomic) that checkpoints, JSON, logs and caches go through."""
import os

import numpy as np
import pytest
import torch

from rdd.checkpoint import load_checkpoint, save_checkpoint
from rdd.files import TEMP_GLOB, temporary_path, write_atomic, write_text_atomic
from rdd.metrics_log import MetricsLog


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "run.json"
    write_text_atomic(target, "old\n")

    def half_then_fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half_then_fail)
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["run.json"]


def test_temporary_names_are_apart_per_process_and_call_and_match_the_one_pattern(tmp_path):
    target = tmp_path / "train_state.pt"
    names = {temporary_path(target).name for _ in range(20)}
    assert len(names) == 20 and all(str(os.getpid()) in name and name.endswith("train_state.pt.tmp") for name in names)
    for name in names:
        (tmp_path / name).touch()
    assert sorted(p.name for p in tmp_path.glob(TEMP_GLOB)) == sorted(names)


def test_every_writer_goes_through_it(tmp_path, monkeypatch):
    """A checkpoint, a truncated metrics log and a reference cache are renamed from a temporary of the pattern."""
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append(os.path.basename(a)), real_replace(a, b)))
    save_checkpoint({"w": torch.ones(2)}, tmp_path / "a.pt")
    log = MetricsLog(tmp_path)
    log.write(1, loss=1.0)
    log.write(2, loss=0.5)
    log.truncate_after(1)
    write_atomic(tmp_path / "ref.npz", lambda f: np.savez(f, mu=np.zeros(2)))
    assert len(renamed) == 3 and all(tmp_path.joinpath(n).match(TEMP_GLOB) for n in renamed)
    assert torch.equal(load_checkpoint(tmp_path / "a.pt")["w"], torch.ones(2))
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1
    assert np.load(tmp_path / "ref.npz")["mu"].shape == (2,)
