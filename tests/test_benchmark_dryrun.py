"""`rdd benchmark --dry-run` on the CIFAR-10 protocol with tiny networks: every stage, every row, the footprint."""
import json

import pytest
import yaml

from helpers import ROOT, run_rdd, write_fake_cifar10
from rdd.config import read_yaml_config

pytestmark = pytest.mark.slow  # trains every stage of the protocol for two iterations


@pytest.fixture(scope="module")
def fake_cifar10(tmp_path_factory):
    return write_fake_cifar10(tmp_path_factory.mktemp("cifar10"), train=300, test=60)


def tiny_protocol(tmp_path, **sections) -> str:
    """configs/cifar10/benchmark.yaml with each stage's config shrunk to a tiny U-Net and a small DenseNet, measured
    by a small evaluation network (Inception-v3 takes a second an image here; test_eval covers the random one)."""
    def shrink(name, saved_as=None, **changes):
        data = read_yaml_config(ROOT / "configs" / "cifar10" / name)
        network = {"model": {"name": "tiny"}} if name == "base.yaml" else {}  # a stage copies its teacher's network
        for section, values in {**changes, **network}.items():
            data.setdefault(section, {}).update(values)
        path = tmp_path / (saved_as or name)
        path.write_text(yaml.safe_dump(data))
        return str(path)

    small_queue = {"queue_size": 256, "num_contrast": 64, "push_per_step": 16}
    bench = read_yaml_config(ROOT / "configs" / "cifar10" / "benchmark.yaml")
    bench.update(out=str(tmp_path / "runs"), teacher_config=shrink("base.yaml"),
                 classifier_config=shrink("classifier.yaml", classifier={"arch": "densenet-bc-small", "batch_size": 16}),
                 evalnet_config=shrink("classifier.yaml", "evalnet.yaml", classifier={"arch": "evalnet-cnn", "batch_size": 16}),
                 distill_config=shrink("distill.yaml", distill=small_queue), pd_config=shrink("pd-1024to8.yaml"), **sections)
    path = tmp_path / "benchmark.yaml"
    path.write_text(yaml.safe_dump(bench))
    return str(path)


def test_dry_run_runs_every_stage_of_the_cifar10_protocol_and_reports_table_1(fake_cifar10, tmp_path):
    # PD from 64 steps (3 halvings) stands in for the configs' 1024 (7): the same stages, fewer of them
    config = tiny_protocol(tmp_path, teacher_steps=64, teacher_ddim_steps=[1, 1024], dpm_solver_steps=None, pndm_steps=None)
    result = run_rdd("benchmark", config, "--dry-run", "--set", f"data.root={fake_cifar10}", "dry_run.max_sampling_steps=4",
                     timeout=1200)
    out = tmp_path / "runs"
    stages = json.loads((out / "stages.json").read_text())
    assert list(stages) == ["classifier", "evalnet", "teacher", "pd 64->8", "chain pd", "chain rcfd", "chain rdd"]
    for name in ("teacher", "pd 64->8", "chain rdd"):
        assert stages[name]["trainable"] > 0 and stages[name]["peak_rss"][0] > 0 and stages[name]["seconds_per_iteration"] > 0
    assert stages["chain rdd"]["frozen"] > stages["chain rdd"]["trainable"] - 1  # teacher + classifier
    assert "[dry-run] chain rdd: global batch 32, trainable" in result.stdout
    # only what a later stage reads is kept: no resume states, one model of the PD chain
    assert not list(out.rglob("*state.pt"))
    assert [p.parent.name for p in (out / "pd-chain").rglob("model.pt")] == ["stage-16to8"]
    page = (out / "results" / "RESULTS.md").read_text()
    assert "Dry run" in page and "Table 1 of the paper" in page
    for row in ("| 1 | RDD |", "| 2 | RCFD |", "| 4 | PD |", "| 1024 | DDIM (sampled with 4 steps) |", "| 8.16 |"):
        assert row in page, row
    rows = json.loads((out / "results" / "results.json").read_text())["rows"]
    assert len(rows) == 2 + 1 + 3 * 3 and all(r["num_samples"] == 10 for r in rows)


def test_dry_run_refuses_bad_data_before_any_stage(fake_cifar10, tmp_path):
    config = tiny_protocol(tmp_path)
    wrong = run_rdd("benchmark", config, "--dry-run", "--set", f"data.root={tmp_path}", check=False)
    assert wrong.returncode == 2 and "no cifar-10-batches-py folder" in wrong.stderr and len(wrong.stderr.splitlines()) == 1
    bigger = run_rdd("benchmark", config, "--dry-run", "--set", f"data.root={fake_cifar10}", "data.resolution=64", check=False)
    assert bigger.returncode == 2 and "are 32x32 but data.resolution is 64" in bigger.stderr
    assert not (tmp_path / "runs").exists()
