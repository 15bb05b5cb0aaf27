"""Your own images (data.dataset: folder, docs/data.md) and a teacher that must agree with its data.
The folders are written here, with PIL, from slices of the real Fashion-MNIST."""
import json
import os

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image

from helpers import ROOT, assert_one_line, error_line, run_cli, run_rdd
from rdd.config import DataConfig
from rdd.data import class_count, load_dataset, read_idx
from rdd.errors import RddError

TWO_STEP = str(ROOT / "assets/fmnist/two_step.pt")


@pytest.fixture(scope="module")
def fmnist_slice(small_fmnist):
    """200 Fashion-MNIST training images (28x28 uint8) and their labels."""
    return read_idx(small_fmnist / "train-images-idx3-ubyte")[:200], read_idx(small_fmnist / "train-labels-idx1-ubyte")[:200]


def tinted(image: np.ndarray, label: int) -> np.ndarray:
    """A grey image coloured by its class: an RGB image whose channels differ."""
    tint = np.array([0.3 + 0.07 * label, 1.0 - 0.07 * label, 0.6])
    return (image[..., None] * tint).astype(np.uint8)


def write_folder(root, images, labels, classes: bool = True, colour: bool = False, suffix: str = ".png", start: int = 0):
    """One file per image, in class folders named after the label (nested one level deeper for odd labels) or flat."""
    for i, (image, label) in enumerate(zip(images, labels), start):
        folder = root / f"class{label}" / ("odd" if label % 2 else "") if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(tinted(image, label) if colour else image).save(folder / f"{i:04d}{suffix}")
    return root


def folder_data(root, **settings) -> DataConfig:
    return DataConfig(**{"dataset": "folder", "root": str(root), "resolution": 16, **settings})


def test_class_folders_are_the_labels_and_the_pixels_are_the_files(fmnist_slice, tmp_path):
    images, labels = fmnist_slice
    root = write_folder(tmp_path / "images", images, labels)
    data = load_dataset(folder_data(root, resolution=28), "train")  # 28 px: no resizing, the exact pixels
    assert class_count(folder_data(root)) == 10 and len(data) == 200
    by_image = {bytes(image): label for image, label in zip(images, labels)}
    for i in range(0, 200, 20):
        x, label = data[i]
        pixels = ((x[0] + 1) * 127.5).round().to(torch.uint8).numpy()
        assert x.shape == (1, 28, 28) and by_image[bytes(pixels)] == label  # class folder i holds label i
    flat = load_dataset(folder_data(write_folder(tmp_path / "flat", images, labels, classes=False)), "train")
    assert class_count(folder_data(tmp_path / "flat")) == 1 and {int(y) for _, y in flat} == {0}  # unlabelled


def test_jpeg_webp_and_wide_images_are_resized_and_center_cropped(fmnist_slice, tmp_path):
    images, labels = fmnist_slice
    root = tmp_path / "mixed"
    write_folder(root, images[:20], labels[:20], colour=True, suffix=".jpg")
    write_folder(root, images[20:40], labels[20:40], colour=True, suffix=".webp")
    wide = np.concatenate([np.zeros((28, 28, 3), np.uint8), tinted(images[40], 3), np.zeros((28, 28, 3), np.uint8)], 1)
    Image.fromarray(wide).save(root / "class3" / "wide.PNG")  # 84 x 28: its center is the garment
    data = load_dataset(folder_data(root, channels=3, resolution=28), "train")
    assert len(data) == 41 and data[0][0].shape == (3, 28, 28)
    garment = torch.from_numpy(tinted(images[40], 3)).permute(2, 0, 1)
    assert any(torch.equal(((x + 1) * 127.5).round().to(torch.uint8), garment) for x, _ in (data[i] for i in range(41)))


def test_the_decoded_copy_is_cached_by_file_list_size_and_time(fmnist_slice, tmp_path, capsys):
    from rdd.files import cache_dir

    images, labels = fmnist_slice
    root = write_folder(tmp_path / "images", images[:50], labels[:50])
    first = load_dataset(folder_data(root), "train")
    assert "50 images; 10 classes; 1x16x16; decoded once into" in capsys.readouterr().out
    assert list((cache_dir() / "folders").glob("images-*.pt")), "no cached copy in $RDD_CACHE/folders"
    victim = next(root.rglob("*.png"))
    stat = victim.stat()
    raw = bytearray(victim.read_bytes())
    raw[40:60] = bytes(20)  # damaged inside, same size
    victim.write_bytes(raw)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert torch.equal(load_dataset(folder_data(root), "train").images, first.images)  # same key: the cached copy
    assert capsys.readouterr().out == ""
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: decoded again, and now unreadable
    with pytest.raises(RddError, match="1 of 50 images .* cannot be read"):  # 2%: more than the 1% skipped
        load_dataset(folder_data(root), "train")


def test_holdout_is_a_fixed_random_draw_that_serves_as_val_and_test(fmnist_slice, tmp_path):
    images, labels = fmnist_slice
    root = write_folder(tmp_path / "images", images, labels)
    data = folder_data(root, holdout=50)
    train, val, test = (load_dataset(data, split) for split in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (150, 50, 50)
    assert len({int(y) for _, y in val}) >= 8  # the sorted files are shuffled once: not the last classes only
    with pytest.raises(RddError, match="no test split; set data.holdout=N"):
        load_dataset(folder_data(root), "test")


def test_colour_read_as_grey_is_refused_and_grey_read_as_rgb_is_copied(fmnist_slice, tmp_path, capsys):
    images, labels = fmnist_slice
    root = write_folder(tmp_path / "mixed", images[:30], labels[:30])
    write_folder(root, images[30:40], labels[30:40], colour=True, start=30)
    with pytest.raises(RddError, match=r"10 of 40 images .* are in colour but data.channels is 1; set data.channels=3"):
        load_dataset(folder_data(root), "train")
    assert len(load_dataset(folder_data(root, channels=3), "train")) == 40
    assert "30 grey images copied to 3 channels" in capsys.readouterr().out


def test_unreadable_images_are_skipped_with_a_count_up_to_one_percent(fmnist_slice, tmp_path, capsys):
    images, labels = fmnist_slice
    root = write_folder(tmp_path / "images", images, labels)
    (root / "class0" / "broken.png").write_bytes(b"\x89PNG not really")
    assert len(load_dataset(folder_data(root), "train")) == 200
    assert "1 unreadable skipped (e.g. '" in capsys.readouterr().out
    for i in range(2):
        (root / "class1" / f"broken{i}.jpg").write_bytes(b"")
    with pytest.raises(RddError, match=r"3 of 203 images in data.root .* cannot be read .*fix or remove them"):
        load_dataset(folder_data(root), "train")


def test_empty_and_imageless_folders_and_padding_are_refused_in_one_line(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "text" / "a").mkdir(parents=True)
    (tmp_path / "text" / "a" / "notes.txt").write_text("no images")
    for root in ("empty", "text"):
        code, err = run_cli(capsys, "train", "--set", "data.dataset=folder", f"data.root={tmp_path / root}",
                            "--out", tmp_path / "run")
        assert_one_line(code, err, "holds no PNG, JPEG or WebP images")
    code, err = run_cli(capsys, "train", "--set", "data.dataset=folder", "--out", tmp_path / "run")
    assert_one_line(code, err, "data.dataset=folder needs data.root")
    with pytest.raises(RddError, match="leave data.resize at bilinear"):
        load_dataset(folder_data(tmp_path / "text", resize="pad"), "train")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------
# The teacher and its data

def rgb_teacher(folder, num_classes: int = 0):
    """A 3-channel 32x32 diffusers teacher with random weights."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8, num_class_embeds=num_classes or None)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("settings, needles", [
    ([], ["names no data set", "--set data.dataset=folder data.root=DIR"]),
    (["data.dataset=fashion_mnist"], ["fashion_mnist has 1-channel images", "makes 3-channel ones", "data.dataset=folder"]),
    (["data.dataset=cifar10", "data.resolution=16"], ["makes 3x32x32 images", "gives 3x16x16", "data.resolution=32"]),
])
def test_a_diffusers_teacher_is_refused_data_not_of_its_kind_before_any_work(capsys, tmp_path, settings, needles):
    teacher = rgb_teacher(tmp_path / "teacher")
    code, err = run_cli(capsys, "distill", "--teacher", teacher, "--method", "pd", "--set", "distill.teacher_steps=8",
                        *settings, "--out", tmp_path / "run")
    error_line(code, err, *needles)
    assert not (tmp_path / "run").exists()


def test_a_shipped_config_for_another_teacher_is_refused(capsys, tmp_path):
    code, err = run_cli(capsys, "progressive", "--config", ROOT / "configs/fmnist/diffusers.yaml",
                        "--teacher", rgb_teacher(tmp_path / "teacher"), "--out", tmp_path / "run")
    error_line(code, err, "makes 3x32x32 images but the data config gives 1x16x16 (fashion_mnist)",
               "--set data.channels=3 data.resolution=32")
    assert not (tmp_path / "run").exists()


def test_class_counts_and_an_rdd_teachers_shape_must_agree(capsys, fmnist_slice, tmp_path):
    images, labels = fmnist_slice
    root = write_folder(tmp_path / "images", images, labels, colour=True)
    code, err = run_cli(capsys, "distill", "--teacher", rgb_teacher(tmp_path / "conditional", num_classes=3), "--method", "pd",
                        "--set", "distill.teacher_steps=8", "data.dataset=folder", f"data.root={root}", "--out", tmp_path / "run")
    error_line(code, err, "conditioned on 3 classes but folder has 10")
    code, err = run_cli(capsys, "distill", "--teacher", TWO_STEP, "--method", "pd", "--set", "data.resolution=32",
                        "--out", tmp_path / "run")
    error_line(code, err, "makes 1x16x16 images but the data config gives 1x32x32")
    assert not (tmp_path / "run").exists()


def test_sweep_and_benchmark_check_the_data_against_the_teacher_before_the_first_run(capsys, tmp_path):
    code, err = run_cli(capsys, "sweep", "--config", ROOT / "configs/fmnist/distill.yaml", "--teacher", TWO_STEP,
                        "--set", "data.resolution=32", "--out", tmp_path / "sweep")
    error_line(code, err, "makes 1x16x16 images but the data config gives 1x32x32")
    (tmp_path / "distill.yaml").write_text(f"base: {ROOT / 'configs/fmnist/distill.yaml'}\ndata: {{resolution: 32}}\n")
    (tmp_path / "benchmark.yaml").write_text(f"out: {tmp_path / 'runs'}\ndistill_config: {tmp_path / 'distill.yaml'}\n")
    code, err = run_cli(capsys, "benchmark", tmp_path / "benchmark.yaml")
    assert_one_line(code, err, "distill_config's data ('fashion_mnist', 1, 32) is not the teacher's ('fashion_mnist', 1, 16)")
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "runs").exists()


def test_the_data_an_rdd_teacher_learned_from_is_the_default(tmp_path):
    from rdd.distill import load_stage_config

    cfg = load_stage_config(None, ["data.holdout=5"], TWO_STEP, "distill")
    assert (cfg.data.dataset, cfg.data.resolution, cfg.data.channels, cfg.data.holdout) == ("fashion_mnist", 16, 1, 5)
    named = load_stage_config(None, ["data.dataset=folder", f"data.root={tmp_path}"], TWO_STEP, "distill")
    assert (named.data.dataset, named.data.root, named.data.resolution) == ("folder", str(tmp_path), 16)


@pytest.mark.slow  # trains
def test_a_3_channel_32px_diffusers_teacher_trains_on_a_folder_of_rgb_images(fmnist_slice, tmp_path):
    images, labels = fmnist_slice
    root = write_folder(tmp_path / "images", images[:64], labels[:64], classes=False, colour=True)
    result = run_rdd("distill", "--teacher", rgb_teacher(tmp_path / "teacher"), "--method", "pd",
                     "--set", "data.dataset=folder", f"data.root={root}", "distill.teacher_steps=8", "distill.iterations=[3]",
                     "train.batch_size=8", "train.ckpt_every=100", "--out", str(tmp_path / "run"))
    assert "folder '" in result.stdout and "64 images; unlabelled; 3x32x32" in result.stdout
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    data = record["config"]["data"]
    assert (data["dataset"], data["root"], data["channels"], data["resolution"]) == ("folder", str(root), 3, 32)
    assert record["iterations"] == 3 and "iterations" not in record["config"]["train"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines][-1] == 3
