"""Each bad input gives one line on stderr that names the problem and the fix, and a non-zero exit."""
import pickle

import pytest
import torch

from rdd.checkpoint import load_checkpoint, save_checkpoint
from rdd.cli import main
from rdd.errors import RddError


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line(code, err, *needles):
    assert code != 0
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_unknown_key_names_the_closest_valid_key(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  iteratons: 10\n")
    assert_one_line(*run_cli(capsys, "train", "--config", str(cfg), "--out", str(tmp_path / "o")), "train.iteratons", "iterations")


def test_unknown_override_key(capsys, tmp_path):
    assert_one_line(*run_cli(capsys, "train", "--set", "modle.name=tiny", "--out", str(tmp_path)), "modle", "model")


def test_wrong_type(capsys, tmp_path):
    assert_one_line(*run_cli(capsys, "train", "--set", "train.lr=fast", "--out", str(tmp_path)), "train.lr", "float")


def test_missing_config_file(capsys, tmp_path):
    assert_one_line(*run_cli(capsys, "train", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)), "not found")


def test_missing_data(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_cli(capsys, "train", "--set", "data.dataset=imagenet64", "--set", f"data.root={empty}", "--out", str(tmp_path / "o"))
    assert_one_line(code, err, "ImageNet", "data.root")
    code, err = run_cli(capsys, "train", "--set", "data.dataset=cifar100", "--out", str(tmp_path / "o"))
    assert_one_line(code, err, "cifar100", "fashion_mnist")


def test_missing_checkpoint(capsys, tmp_path):
    assert_one_line(*run_cli(capsys, "sample", "--ckpt", str(tmp_path / "none.pt"), "--out", str(tmp_path / "g.png")), "not found")


def test_corrupt_checkpoint(capsys, tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint({"model": {"w": torch.randn(1000)}}, path)
    path.write_bytes(path.read_bytes()[:500])  # truncated, as by a copy that died
    assert_one_line(*run_cli(capsys, "sample", "--ckpt", str(path), "--out", str(tmp_path / "g.png")), "corrupt")


class Payload:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > /dev/null",))


def test_unsafe_pickle_is_refused(capsys, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "x": Payload()}, path)
    code, err = run_cli(capsys, "sample", "--ckpt", str(path), "--out", str(tmp_path / "g.png"))
    assert_one_line(code, err, "unsafe")
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(Payload(), f)
    with pytest.raises(RddError, match="unsafe|corrupt"):
        load_checkpoint(tmp_path / "plain.pkl")


def test_mismatched_checkpoint(capsys, tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint({"kind": "diffusion", "model": {"conv.weight": torch.zeros(3)}, "config": {"model": {"name": "tiny"}}}, path)
    assert_one_line(*run_cli(capsys, "sample", "--ckpt", str(path), "--out", str(tmp_path / "g.png")), "does not match")


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "state.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise KeyboardInterrupt  # a kill arriving in the middle of torch.save

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2, "w": torch.zeros(3), "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left behind
