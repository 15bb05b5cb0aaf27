import pytest
from PIL import Image

from helpers import ROOT, TINY_STAGE, run_rdd

pytestmark = pytest.mark.slow  # every test here trains a model or starts torchrun


def test_report_renders_table_grids_and_curves_of_a_progressive_run(teacher, classifier, evalnet, small_fmnist, tmp_path):
    runs = tmp_path / "runs"
    for method in ("pd", "rcfd"):
        run_rdd("progressive", "--config", str(ROOT / "configs/fmnist/distill.yaml"), "--teacher", str(teacher),
                "--method", method, "--to", "1", "--out", str(runs / method), *TINY_STAGE, "--set", f"data.root={small_fmnist}",
                "--set", "distill.teacher_steps=4", "--set", "distill.iterations=[3]", "--set", "classifier.checkpoint=null"
                if method == "pd" else f"classifier.checkpoint={classifier}")
    result = run_rdd("report", str(runs), "--evalnet", str(evalnet), "--num", "64")
    page = (runs / "report.md").read_text()
    assert "report.md" in result.stdout
    assert "| steps | pd | rcfd |" in page and "| 1 |" in page and "| 2 |" in page
    assert page.count("pd/stage-") == 2 and page.count("rcfd/stage-") == 2
    grids = Image.open(runs / "report" / "grids.png")
    curves = Image.open(runs / "report" / "loss_curves.png")
    assert grids.size[0] > 16 * 17 and grids.size[1] > 4 * 40  # 4 rows of 16 images
    assert curves.size[0] >= 3 * 400 and curves.size[1] >= 2 * 300  # 4 stages on a 3-column grid
    assert len(list((runs / "eval").glob("*.json"))) == 4
