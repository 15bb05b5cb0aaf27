"""The reliability mechanisms (docs/reliability.md): the non-finite guard, the run manifest and lock,
checkpoint digests and the clean-up of stale temporary files, each driven through the real command."""
import json
import os
import shutil

import pytest
import torch

from helpers import ROOT, TINY, error_line, run_cli, run_rdd
from rdd.checkpoint import first_nonfinite, load_checkpoint, save_checkpoint
from rdd.cli import main
from rdd.config import load_config
from rdd.distill import run_progressive
from rdd.distributed import DistContext
from rdd.errors import RddError
from rdd.files import temporary_path
from rdd.model_io import export_model, load_diffusion_model
from rdd.rundir import RunLock

CPU = DistContext(0, 1, torch.device("cpu"))


def files(folder) -> dict:
    """Every file's bytes; the lock file only holds the pid of its last holder."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture
def train_args(small_fmnist):
    return ["train", *TINY, "--set", f"data.root={small_fmnist}", "--set", "train.ckpt_every=1"]


@pytest.fixture(scope="module")
def tiny_model(small_fmnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    assert main(["train", *TINY, "--set", f"data.root={small_fmnist}", "--set", "train.iterations=3", "--out", str(out)]) == 0
    return out / "model.pt"


def test_a_diverging_run_stops_at_the_first_nan_and_keeps_the_last_good_checkpoint(capsys, tmp_path, train_args):
    out = tmp_path / "nan"
    code, err = run_cli(capsys, *train_args, "--set", "train.iterations=6", "--set", "train.lr=1e30", "--out", out)
    error_line(code, err, "step 2", "loss nan", "train.lr", "last good checkpoint (step 1)")
    state = load_checkpoint(out / "train_state.pt")
    assert state["step"] == 1 and first_nonfinite(state["model"]) is None and first_nonfinite(state["ema"]) is None
    assert not (out / "model.pt").exists()


@pytest.mark.slow
def test_a_diverged_classifier_is_not_written(capsys, tmp_path, small_fmnist):
    code, err = run_cli(capsys, "train-evalnet", "--set", f"data.root={small_fmnist}", "--set", "classifier.epochs=1",
                    "--set", "classifier.train_limit=256", "--set", "classifier.lr=1e30", "--out", tmp_path)
    error_line(code, err, "diverged", "classifier.lr")
    assert not (tmp_path / "evalnet.pt").exists()


@pytest.mark.slow
def test_a_model_with_nan_weights_is_never_written_and_never_sampled(capsys, tmp_path, tiny_model):
    model, cfg, meta = load_diffusion_model(tiny_model)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(RddError, match="nan or inf"):
        export_model(tmp_path / "model.pt", model, cfg, meta)
    assert not (tmp_path / "model.pt").exists()

    state = load_checkpoint(tiny_model)  # damaged outside rdd, then saved with a valid digest
    state["model"] = model.state_dict()
    save_checkpoint(state, tmp_path / "nan.pt")
    error_line(*run_cli(capsys, "sample", "--ckpt", tmp_path / "nan.pt", "--out", tmp_path / "g.png"), "non-finite weights")
    error_line(*run_cli(capsys, "eval", "--ckpt", tmp_path / "nan.pt", "--evalnet", ROOT / "assets/fmnist/evalnet.pt", "--num", 16),
               "non-finite weights")


@pytest.mark.slow
def test_an_existing_run_is_refused_unless_resumed_with_the_same_settings(capsys, tmp_path, train_args):
    out = tmp_path / "run"
    args = [*train_args, "--set", "train.iterations=3", "--out", out]
    assert run_cli(capsys, *args)[0] == 0
    before = files(out)
    error_line(*run_cli(capsys, *args), "already holds a run", "--resume", "--overwrite")
    line = error_line(*run_cli(capsys, *args, "--resume", "--set", "train.lr=1e-3", "--set", "model.dropout=0.1"), "other settings")
    assert "train.lr: 0.0002 -> 0.001" in line and "model.dropout: 0.0 -> 0.1" in line
    error_line(*run_cli(capsys, *args, "--resume", "--set", "train.iterations=2"), "done 3 steps", "at least 3")
    error_line(*run_cli(capsys, *args, "--resume", "--overwrite"), "--resume", "--overwrite")
    assert files(out) == before

    # Training longer and logging differently are allowed; --overwrite starts over.
    assert run_cli(capsys, *args, "--resume", "--set", "train.iterations=5", "--set", "train.log_every=2")[0] == 0
    assert load_checkpoint(out / "train_state.pt")["step"] == 5
    assert json.loads((out / "run.json").read_text())["iterations"] == 5
    assert run_cli(capsys, *args, "--overwrite", "--set", "train.lr=1e-3")[0] == 0
    assert load_checkpoint(out / "train_state.pt")["step"] == 3
    assert json.loads((out / "run.json").read_text())["config"]["train"]["lr"] == 1e-3


@pytest.mark.slow
def test_a_second_process_on_the_same_run_folder_is_refused(tmp_path, train_args):
    out = tmp_path / "busy"
    with RunLock(out):
        result = run_rdd(*train_args, "--set", "train.iterations=2", "--out", str(out), check=False)
    error_line(result.returncode, result.stderr, "in use by another rdd process", f"pid {os.getpid()}")
    assert not (out / "run.json").exists() and not (out / "train_state.pt").exists()


@pytest.mark.slow
def test_a_flipped_byte_in_the_weights_is_refused(capsys, tmp_path, tiny_model):
    damaged = tmp_path / "model.pt"
    shutil.copy(tiny_model, damaged)
    weight = max(load_checkpoint(damaged)["model"].values(), key=lambda t: t.numel())
    data = bytearray(damaged.read_bytes())
    at = data.find(weight.numpy().tobytes()[:256])  # inside the tensor's storage, not the pickle
    assert at > 0
    data[at + 100] ^= 0x10
    damaged.write_bytes(data)
    error_line(*run_cli(capsys, "sample", "--ckpt", damaged, "--out", tmp_path / "g.png"),
               "is damaged: its contents do not match the stored digest; use another copy")

    (tmp_path / "noise.pt").write_bytes(os.urandom(4096))
    with pytest.raises(RddError, match="corrupt"):
        load_checkpoint(tmp_path / "noise.pt")
    torch.save({"model": {"w": torch.ones(3)}}, tmp_path / "old.pt")  # no digest: files from before it load as they are
    assert torch.equal(load_checkpoint(tmp_path / "old.pt")["model"]["w"], torch.ones(3))
    assert "model" in load_checkpoint(ROOT / "assets/fmnist/two_step.pt")


def test_temporary_files_left_by_a_kill_are_removed_on_the_next_start(capsys, tmp_path, train_args):
    out = tmp_path / "run"
    args = [*train_args, "--set", "train.iterations=2", "--out", out]
    assert run_cli(capsys, *args)[0] == 0
    (out / "snapshots").mkdir()
    stale = [temporary_path(out / "train_state.pt"), temporary_path(out / "run.json"),
             temporary_path(out / "snapshots" / "model-0000001.pt")]
    for path in stale:
        path.write_bytes(b"half a file")
    mine = [out / ".run.json.4242.tmp", out / "notes.tmp", out / "snapshots" / ".draft.tmp"]  # names a user may choose
    for path in mine:
        path.write_bytes(b"a user's file")
    assert run_cli(capsys, *args, "--resume", "--set", "train.iterations=3")[0] == 0
    assert not any(p.exists() for p in stale) and not list(out.rglob(".rdd-tmp-*"))
    assert all(p.read_bytes() == b"a user's file" for p in mine)


@pytest.mark.slow
def test_progressive_refuses_a_finished_chain_of_another_method(capsys, tmp_path, tiny_model, small_fmnist):
    tiny = ["train.batch_size=8", "train.sample_every=0", "train.num_grid=4",
            "train.ckpt_every=1000", f"data.root={small_fmnist}", "distill.teacher_steps=4", "distill.iterations=[2]"]
    cfg = load_config(ROOT / "configs/fmnist/distill.yaml", tiny + ["distill.method=pd"])
    models = run_progressive(cfg, tiny_model, tmp_path, CPU)
    before = files(tmp_path)
    assert run_progressive(cfg, tiny_model, tmp_path, CPU) == models and files(tmp_path) == before  # reused as they are

    code, err = run_cli(capsys, "progressive", "--config", ROOT / "configs/fmnist/distill.yaml", "--method", "rcfd",
                    *[a for o in tiny for a in ("--set", o)], "--set", f"classifier.checkpoint={tiny_model}",
                    "--teacher", tiny_model, "--out", tmp_path)
    error_line(code, err, "finished stage", "distill.method: 'pd' -> 'rcfd'", "--overwrite")
    assert files(tmp_path) == before
