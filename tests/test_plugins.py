"""User losses from the command line: `--plugin FILE` (or the config's `plugins:`) registers a term and a
method that every command then accepts, with no edit inside src/rdd."""
import pytest

from helpers import ROOT, TINY_STAGE, error_line, run_cli, run_rdd
from rdd.metrics_log import read_metrics
from rdd.plugins import plugins_in
from rdd.registry import METHODS, TERMS

PLUGIN = ROOT / "tests/plugins/attention_transfer.py"


@pytest.fixture
def unregister():
    """Plugins imported in this process register for good: forget them after the test."""
    yield
    for name in ("at", "at_typo"):
        TERMS.pop(name, None)
    for name in ("cfd_at", "cfd_at_typo"):
        METHODS.pop(name, None)
    import rdd.plugins
    rdd.plugins.LOADED.clear()


def test_plugins_are_found_on_the_command_line_before_it_is_parsed():
    assert plugins_in(["distill", "--plugin", "a.py", "--set", "x=1", "--plugin=b", "--method", "m"]) == ["a.py", "b"]


def test_a_misspelt_weight_key_is_refused_in_one_line_before_the_teacher_loads(capsys, tmp_path, unregister):
    bad = tmp_path / "bad_plugin.py"
    bad.write_text(PLUGIN.read_text().replace('register_method("cfd_at", [("cfd", None), ("at", "alpha")])',
                                              'register_method("cfd_at_typo", [("cfd", None), ("at", "alhpa")])'))
    line = error_line(*run_cli(capsys, "distill", "--plugin", bad, "--teacher", tmp_path / "not-yet.pt", "--out", tmp_path / "o"),
                      "bad_plugin.py", "line 28", "'alhpa'", "alpha")
    assert "not-yet.pt" not in line and not (tmp_path / "o").exists()


def test_a_plugin_that_fails_to_import_is_one_line_naming_the_file(capsys, tmp_path, unregister):
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\n\nx = torch.ones(2) @ torch.ones(3)\n")
    error_line(*run_cli(capsys, "train", "--plugin", broken, "--out", tmp_path / "o"), "broken.py", "line 3", "RuntimeError")
    error_line(*run_cli(capsys, "train", "--plugin", tmp_path / "missing.py", "--out", tmp_path / "o"), "missing.py", "not found")
    error_line(*run_cli(capsys, "train", "--plugin", "no_such_module_here", "--out", tmp_path / "o"), "no_such_module_here")
    config = tmp_path / "c.yaml"
    config.write_text(f"plugins: [{broken}]\n")
    error_line(*run_cli(capsys, "train", "--config", config, "--out", tmp_path / "o"), "broken.py", "line 3")


@pytest.mark.slow
def test_a_term_and_method_from_a_plugin_train_a_stage_a_chain_and_a_report(teacher, classifier, small_fmnist, tmp_path):
    common = ["--config", str(ROOT / "configs/fmnist/distill.yaml"), "--teacher", str(teacher), *TINY_STAGE,
              "--set", f"data.root={small_fmnist}", f"classifier.checkpoint={classifier}", "distill.iterations=[3]",
              "distill.alpha=2.0", "train.batch_size=8"]
    run_rdd("distill", "--plugin", str(PLUGIN), *common, "distill.teacher_steps=2", "--method", "cfd_at",
            "--out", str(tmp_path / "runs" / "stage"))
    logged = read_metrics(tmp_path / "runs" / "stage" / "metrics.jsonl")[-1]
    assert logged["loss"] == pytest.approx(logged["loss_cfd"] + 2.0 * logged["loss_at"], rel=1e-5)
    config = tmp_path / "with_plugin.yaml"  # the config key: the chain's config names the plugin itself
    config.write_text(f"base: {ROOT / 'configs/fmnist/distill.yaml'}\nplugins: [{PLUGIN}]\ndistill: {{method: cfd_at}}\n")
    common[1] = str(config)
    result = run_rdd("progressive", *common, "distill.teacher_steps=4", "--to", "1", "--out", str(tmp_path / "runs" / "chain"))
    assert "stage-2to1" in result.stdout
    assert "loss_at" in (tmp_path / "runs" / "chain" / "stage-2to1" / "metrics.jsonl").read_text()
    run_rdd("report", str(tmp_path / "runs"), "--plugin", str(PLUGIN))
    page = (tmp_path / "runs" / "report.md").read_text()
    assert "| stage |" in page and "| chain/stage-2to1 |" in page and (tmp_path / "runs" / "report" / "loss_curves.png").is_file()
