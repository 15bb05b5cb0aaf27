import hashlib
import shutil

import pytest
from PIL import Image

from helpers import run_rdd

pytestmark = pytest.mark.slow  # every test here trains a model or starts torchrun


def make_assets(folder, teacher, classifier, evalnet):
    folder.mkdir()
    for name, source in (("two_step.pt", teacher), ("classifier.pt", classifier), ("evalnet.pt", evalnet)):
        shutil.copy(source, folder / name)
    sums = [f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}" for n in ("two_step.pt", "classifier.pt", "evalnet.pt")]
    (folder / "SHA256SUMS").write_text("\n".join(sums) + "\n")


def test_demo_distils_with_pd_rcfd_and_rdd_evaluates_and_reports(teacher, classifier, evalnet, small_fmnist, tmp_path):
    assets = tmp_path / "assets"
    make_assets(assets, teacher, classifier, evalnet)
    out = tmp_path / "demo"
    result = run_rdd("demo", "--assets", str(assets), "--out", str(out), "--num", "100", "--set", f"data.root={small_fmnist}",
                     "--set", "distill.iterations=[3]", "--set", "train.batch_size=8", "--set", "distill.queue_size=64",
                     "--set", "distill.num_contrast=16", "--set", "distill.push_per_step=8")
    assert all(f"| {m} 1 step | 1 |" in result.stdout for m in ("PD", "RCFD", "RDD"))
    page = (out / "report.md").read_text()
    assert "| RDD 1 step |" in page and "![grids](grids.png)" in page
    width, height = Image.open(out / "grids.png").size
    assert width > 16 * 17 and height > 4 * 40  # 4 rows of 16 images from the same noise
    assert all((out / m / "model.pt").is_file() for m in ("pd", "rcfd", "rdd"))


def test_a_damaged_shipped_model_is_a_one_line_error(teacher, classifier, evalnet, tmp_path):
    assets = tmp_path / "assets"
    make_assets(assets, teacher, classifier, evalnet)
    with open(assets / "two_step.pt", "ab") as f:
        f.write(b"x")
    result = run_rdd("demo", "--assets", str(assets), "--out", str(tmp_path / "demo"), check=False)
    assert result.returncode == 2 and "checksum" in result.stderr and len(result.stderr.strip().splitlines()) == 1
