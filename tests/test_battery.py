"""A hostile battery: every command fed what a new user, a full disk or a cluster may hand it.

Each case is a command line (and the files it needs). Every refusal must be one `rdd:` line with no
traceback, name the problem, and leave what it was given untouched; the cases marked `ok` must work.
The case list is the battery's record: docs/reliability.md counts it by class.
"""
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from helpers import ROOT, TINY, TINY_STAGE
from rdd.checkpoint import load_checkpoint, save_checkpoint
from rdd.cli import main

pytestmark = pytest.mark.slow  # the kit trains a tiny teacher, classifier and evaluation network


@dataclass
class Case:
    name: str
    argv: str  # placeholders: {teacher} {student} {classifier} {evalnet} {data} {tmp} {cfg}
    needle: str = ""  # a part of the one error line ("" for an ok case)
    setup: str = ""  # name of a Kit method that makes the files the case needs
    env: dict = field(default_factory=dict)
    ok: bool = False


class Kit:
    """The real (tiny) models of the session and a fresh folder per case."""

    def __init__(self, tmp: Path, teacher: Path, student: Path, classifier: Path, evalnet: Path, data: Path):
        self.tmp, self.teacher, self.student, self.classifier, self.evalnet, self.data = tmp, teacher, student, classifier, evalnet, data

    def fmt(self, text: str) -> list[str]:
        values = dict(teacher=self.teacher, student=self.student, classifier=self.classifier, evalnet=self.evalnet,
                      data=self.data, tmp=self.tmp, cfg=ROOT / "configs/fmnist/distill.yaml")
        return [part.format(**values) for part in text.split()]

    # --- files the cases need -----------------------------------------------------------------
    def binary_config(self):
        (self.tmp / "c.yaml").write_bytes(os.urandom(300) + b"\x00\xff")

    def yaml_syntax(self):
        (self.tmp / "c.yaml").write_text("train: {iterations: 3\n  lr: [")

    def yaml_list(self):
        (self.tmp / "c.yaml").write_text("- train\n- data\n")

    def yaml_section_scalar(self):
        (self.tmp / "c.yaml").write_text("train: 5\n")

    def base_missing(self):
        (self.tmp / "c.yaml").write_text("base: nowhere.yaml\ntrain: {iterations: 3}\n")

    def base_cycle(self):
        (self.tmp / "c.yaml").write_text("base: c.yaml\n")

    def config_dir(self):
        (self.tmp / "c.yaml").mkdir()

    def random_bytes(self):
        (self.tmp / "x.pt").write_bytes(os.urandom(5000))

    def empty_file(self):
        (self.tmp / "x.pt").write_bytes(b"")

    def text_file(self):
        (self.tmp / "x.pt").write_text("this is not a checkpoint\n")

    def truncated(self):
        data = self.teacher.read_bytes()
        (self.tmp / "x.pt").write_bytes(data[: len(data) // 2])

    def code_pickle(self, protocol: int = 2):
        class Evil:
            def __reduce__(self):
                return (os.system, ("touch /tmp/rdd-battery-pwned",))
        (self.tmp / "x.pt").write_bytes(pickle.dumps({"model": Evil()}, protocol=protocol))

    def code_pickle_new_protocol(self):
        self.code_pickle(protocol=5)

    def plain_state_dict(self):
        torch.save({"w": torch.ones(2)}, self.tmp / "x.pt")

    def list_checkpoint(self):
        torch.save([torch.ones(2)], self.tmp / "x.pt")

    def teacher_run(self):
        shutil.copytree(self.teacher.parent, self.tmp / "run")

    def user_files(self):
        (self.tmp / "run").mkdir()
        (self.tmp / "run" / "metrics.jsonl").write_text('{"mine": 1}\n')
        (self.tmp / "run" / "samples.png").write_bytes(b"user's picture")

    def out_is_file(self):
        (self.tmp / "run").write_text("a file")

    def damaged_run_json(self):
        self.teacher_run()
        (self.tmp / "run" / "run.json").write_text("{not json")

    def list_run_json(self):
        self.teacher_run()
        (self.tmp / "run" / "run.json").write_text("[1, 2]")

    def no_run_json(self):
        self.teacher_run()
        (self.tmp / "run" / "run.json").unlink()

    def bad_metrics(self):
        self.teacher_run()
        with open(self.tmp / "run" / "metrics.jsonl", "a") as f:
            f.write('{"step": \n\x00garbage\n[1]\n{"loss": 1}\n')

    def state_without_keys(self):
        self.teacher_run()
        save_checkpoint({"step": 1}, self.tmp / "run" / "train_state.pt")

    def classifier_run(self):
        shutil.copytree(self.classifier.parent, self.tmp / "run")

    def bad_reference(self):
        (self.tmp / "ref.npz").write_bytes(os.urandom(100))

    def wrong_reference(self):
        import numpy as np
        np.savez(self.tmp / "ref.npz", mu=np.zeros(3), sigma=np.eye(3))

    def export_target(self):
        (self.tmp / "exp").mkdir()
        (self.tmp / "exp" / "notes.txt").write_text("mine")

    def bad_idx(self):
        shutil.copytree(self.data, self.tmp / "data")
        images = self.tmp / "data" / "train-images-idx3-ubyte"
        images.write_bytes(images.read_bytes()[:1000])

    def wrong_magic(self):
        shutil.copytree(self.data, self.tmp / "data")
        images = self.tmp / "data" / "train-images-idx3-ubyte"
        images.write_bytes(b"\x00\x00\x09\x03" + images.read_bytes()[4:])

    def label_mismatch(self):
        shutil.copytree(self.data, self.tmp / "data")
        labels = self.tmp / "data" / "train-labels-idx1-ubyte"
        data = labels.read_bytes()
        labels.write_bytes(data[:4] + (1000).to_bytes(4, "big") + data[8:1008])

    def nan_model(self):
        state = load_checkpoint(self.teacher)
        first = next(iter(state["model"]))
        state["model"][first] = torch.full_like(state["model"][first], float("nan"))
        save_checkpoint(state, self.tmp / "x.pt")


TRAIN = "train " + " ".join(TINY) + " --set data.root={data} --set train.iterations=2"
DISTILL = ("distill --config {cfg} --teacher {teacher} --method pd --set distill.teacher_steps=2 --set distill.iterations=[2] "
           + " ".join(TINY_STAGE) + " --set data.root={data} --set classifier.checkpoint={classifier}")
SAMPLE = "sample --ckpt {student} --num 4"
EVAL = "eval --ckpt {student} --evalnet {evalnet} --num 16"

CASES = [
    # --- config ---------------------------------------------------------------------------------
    Case("config unknown key", TRAIN + " --set train.iteratons=3 --out {tmp}/o", "did you mean 'iterations'"),
    Case("config unknown section", TRAIN + " --set trian.lr=1 --out {tmp}/o", "trian"),
    Case("config set without =", TRAIN + " --set train.lr --out {tmp}/o", "section.key=value"),
    Case("config wrong type", TRAIN + " --set train.iterations=abc --out {tmp}/o", "train.iterations"),
    Case("config float for int", TRAIN + " --set train.batch_size=2.5 --out {tmp}/o", "train.batch_size"),
    Case("config negative iterations", TRAIN + " --set train.iterations=-3 --out {tmp}/o", "train.iterations"),
    Case("config zero batch", TRAIN + " --set train.batch_size=0 --out {tmp}/o", "train.batch_size"),
    Case("config nan lr", TRAIN + " --set train.lr=nan --out {tmp}/o", "train.lr"),
    Case("config inf lr", TRAIN + " --set train.lr=inf --out {tmp}/o", "train.lr"),
    Case("config huge seed", TRAIN + " --set train.seed=100000000000000000000000 --out {tmp}/o", "train.seed"),
    Case("config negative seed", TRAIN + " --set train.seed=-1 --out {tmp}/o", "train.seed"),
    Case("config huge iterations", TRAIN + " --set train.iterations=100000000000000000000000 --out {tmp}/o", "train.iterations"),
    Case("config missing file", "train --config {tmp}/none.yaml --out {tmp}/o", "not found"),
    Case("config is a folder", "train --config {tmp}/c.yaml --out {tmp}/o", "is a folder", setup="config_dir"),
    Case("config not text", "train --config {tmp}/c.yaml --out {tmp}/o", "not a text", setup="binary_config"),
    Case("config yaml syntax", "train --config {tmp}/c.yaml --out {tmp}/o", "YAML", setup="yaml_syntax"),
    Case("config top-level list", "train --config {tmp}/c.yaml --out {tmp}/o", "mapping", setup="yaml_list"),
    Case("config section scalar", "train --config {tmp}/c.yaml --out {tmp}/o", "train", setup="yaml_section_scalar"),
    Case("config base missing", "train --config {tmp}/c.yaml --out {tmp}/o", "nowhere.yaml", setup="base_missing"),
    Case("config base cycle", "train --config {tmp}/c.yaml --out {tmp}/o", "base", setup="base_cycle"),
    Case("config unknown dataset", TRAIN + " --set data.dataset=mnist2 --out {tmp}/o", "data.dataset"),
    Case("config zero resolution", TRAIN + " --set data.resolution=0 --out {tmp}/o", "data.resolution"),
    Case("config class count", TRAIN + " --set model.num_classes=1000 --out {tmp}/o", "num_classes"),
    Case("config unknown model", TRAIN + " --set model.name=huge --out {tmp}/o", "model.name"),
    Case("config unknown method", DISTILL.replace("--method pd", "") + " --set distill.method=foo --out {tmp}/o", "method"),
    Case("config method flag contradicts --set", DISTILL + " --set distill.method=rdd --out {tmp}/o", "disagree"),
    Case("config method flag", DISTILL.replace("--method pd", "--method foo") + " --out {tmp}/o", "method"),
    Case("config fidelity typo", DISTILL + " --set distill.fidelity=offical --out {tmp}/o", "offical"),
    Case("config zero tau", DISTILL + " --set distill.tau_cfd=[0] --out {tmp}/o", "tau"),
    Case("config empty tau list", DISTILL + " --set distill.tau_cfd=[] --out {tmp}/o", "tau_cfd"),
    Case("config empty iterations", DISTILL + " --set distill.iterations=[] --out {tmp}/o", "distill.iterations"),
    Case("config queue below V", DISTILL + " --set distill.queue_size=10 --out {tmp}/o", "queue"),
    Case("config negative weight", DISTILL + " --set distill.beta=-1 --out {tmp}/o", "beta"),
    Case("config steps do not halve", DISTILL.replace("distill.teacher_steps=2", "distill.teacher_steps=3") + " --out {tmp}/o", "halv"),
    Case("config target above teacher", "progressive --config {cfg} --teacher {teacher} --method pd --set distill.teacher_steps=4 "
         "--to 8 --out {tmp}/o", "8"),
    Case("config ema decay above 1", TRAIN + " --set train.ema_decay=1.5 --out {tmp}/o", "ema_decay"),
    Case("config warmup above iterations", TRAIN + " --set train.warmup=50 --out {tmp}/o", "warmup"),
    Case("config batch above data", TRAIN + " --set train.batch_size=4000 --out {tmp}/o", "larger than the 3000 training images"),
    # --- paths and kinds of file ---------------------------------------------------------------------
    Case("teacher missing", DISTILL.replace("{teacher}", "{tmp}/none.pt") + " --out {tmp}/o", "not found"),
    Case("teacher random bytes", DISTILL.replace("{teacher}", "{tmp}/x.pt") + " --out {tmp}/o", "corrupt", setup="random_bytes"),
    Case("teacher empty file", DISTILL.replace("{teacher}", "{tmp}/x.pt") + " --out {tmp}/o", "is empty", setup="empty_file"),
    Case("teacher text file", DISTILL.replace("{teacher}", "{tmp}/x.pt") + " --out {tmp}/o", "corrupt", setup="text_file"),
    Case("teacher truncated", DISTILL.replace("{teacher}", "{tmp}/x.pt") + " --out {tmp}/o", "truncated", setup="truncated"),
    Case("teacher code pickle", DISTILL.replace("{teacher}", "{tmp}/x.pt") + " --out {tmp}/o", "code objects", setup="code_pickle"),
    Case("teacher code pickle, protocol 5", DISTILL.replace("{teacher}", "{tmp}/x.pt") + " --out {tmp}/o", "safe loader",
         setup="code_pickle_new_protocol"),
    Case("teacher plain state dict", DISTILL.replace("{teacher}", "{tmp}/x.pt") + " --out {tmp}/o", "not an rdd diffusion",
         setup="plain_state_dict"),
    Case("teacher is a list", DISTILL.replace("{teacher}", "{tmp}/x.pt") + " --out {tmp}/o", "does not hold an rdd", setup="list_checkpoint"),
    Case("teacher is a classifier", DISTILL.replace("{teacher}", "{classifier}") + " --out {tmp}/o", "classifier checkpoint"),
    Case("teacher is an evalnet", DISTILL.replace("{teacher}", "{evalnet}") + " --out {tmp}/o", "classifier checkpoint"),
    Case("teacher is a train state", DISTILL.replace("{teacher}", "{tmp}/run/train_state.pt") + " --out {tmp}/o", "ok", setup="teacher_run",
         ok=True),
    Case("teacher is a folder", DISTILL.replace("{teacher}", "{tmp}") + " --out {tmp}/o", "diffusers"),
    Case("teacher nan weights", DISTILL.replace("{teacher}", "{tmp}/x.pt") + " --out {tmp}/o", "non-finite", setup="nan_model"),
    Case("classifier missing", DISTILL.replace("--method pd", "--method rcfd").replace("{classifier}", "{tmp}/none.pt") + " --out {tmp}/o",
         "not found"),
    Case("classifier is a diffusion model", DISTILL.replace("--method pd", "--method rcfd").replace("{classifier}", "{teacher}")
         + " --out {tmp}/o", "not a classifier"),
    Case("classifier is the evaluation network", DISTILL.replace("--method pd", "--method rcfd").replace("{classifier}", "{evalnet}")
         + " --out {tmp}/o", "is the evaluation network"),
    Case("classifier random bytes", DISTILL.replace("--method pd", "--method rcfd").replace("{classifier}", "{tmp}/x.pt")
         + " --out {tmp}/o", "corrupt", setup="random_bytes"),
    Case("out is a file", TRAIN + " --out {tmp}/run", "file", setup="out_is_file"),
    Case("out under a file", TRAIN + " --out {tmp}/run/sub", "run", setup="out_is_file"),
    Case("out on a read-only file system", TRAIN + " --out /proc/rdd-battery/run", "cannot write"),
    Case("out holds the teacher", DISTILL.replace("{teacher}", "{tmp}/run/model.pt") + " --out {tmp}/run --overwrite",
         "holds this run's teacher", setup="teacher_run"),
    Case("out holds the teacher, resume", DISTILL.replace("{teacher}", "{tmp}/run/model.pt") + " --out {tmp}/run --resume",
         "holds this run's teacher", setup="teacher_run"),
    Case("out holds the classifier", DISTILL.replace("--method pd", "--method rcfd") + " --out " + "{classifier}/..",
         "holds this run's classifier"),
    Case("out inside the teacher's run folder", DISTILL.replace("{teacher}", "{tmp}/run/model.pt") + " --out {tmp}/run/student",
         setup="teacher_run", ok=True),
    Case("fresh out with user files", TRAIN + " --out {tmp}/run", "which no rdd run recorded", setup="user_files"),
    Case("fresh out with user files, overwrite", TRAIN + " --out {tmp}/run --overwrite", "which no rdd run recorded", setup="user_files"),
    Case("distill over a train run", DISTILL + " --out {tmp}/run --overwrite", "holds a train run", setup="teacher_run"),
    Case("train over a classifier folder", TRAIN + " --out {tmp}/run", "ok", setup="classifier_run", ok=True),
    # --- runs ------------------------------------------------------------------------------------
    Case("existing run", TRAIN + " --out {tmp}/run", "already holds a run", setup="teacher_run"),
    Case("resume and overwrite", TRAIN + " --out {tmp}/run --resume --overwrite", "pass one of them", setup="teacher_run"),
    Case("resume changed setting", TRAIN + " --out {tmp}/run --resume --set train.lr=0.5", "other settings", setup="teacher_run"),
    Case("resume fewer iterations", TRAIN + " --set train.lr=1e-3 --out {tmp}/run --resume", "would undo", setup="teacher_run"),
    Case("resume damaged run.json", TRAIN + " --out {tmp}/run --resume", "damaged", setup="damaged_run_json"),
    Case("resume run.json list", TRAIN + " --out {tmp}/run --resume", "not an rdd run record", setup="list_run_json"),
    Case("resume without run.json", TRAIN + " --out {tmp}/run --resume", "no rdd run recorded", setup="no_run_json"),
    Case("resume bad metrics lines", TRAIN.replace("iterations=2", "iterations=200") + " --set train.lr=1e-3 --set train.ckpt_every=1000"
         + " --set train.iterations=151 --out {tmp}/run --resume", "ok", setup="bad_metrics", ok=True),
    Case("resume state without keys", TRAIN.replace("iterations=2", "iterations=151") + " --set train.lr=1e-3 --set train.ckpt_every=1000"
         + " --out {tmp}/run --resume", "missing", setup="state_without_keys"),
    Case("progressive odd target", "progressive --config {cfg} --teacher {teacher} --method pd --set distill.teacher_steps=8 --to 3 "
         "--out {tmp}/o", "halv"),
    Case("sweep bad grid", "sweep --config {cfg} --teacher {teacher} --grid distill.beta --out {tmp}/o", "--grid"),
    Case("sweep bad seeds", "sweep --config {cfg} --teacher {teacher} --seeds a,b --out {tmp}/o", "--seeds"),
    Case("sweep zero jobs", "sweep --config {cfg} --teacher {teacher} --jobs 0 --out {tmp}/o", "--jobs"),
    Case("sweep one sample", "sweep --config {cfg} --teacher {teacher} --eval-samples 1 --out {tmp}/o", "--eval-samples"),
    Case("sweep out holds the teacher", "sweep --config {cfg} --teacher {tmp}/run/model.pt --out {tmp}/run", "teacher",
         setup="teacher_run"),
    Case("benchmark missing config", "benchmark {tmp}/none.yaml", "not found"),
    # --- sample, eval, export ---------------------------------------------------------------------
    Case("sample nothing to write", SAMPLE, "nothing to write"),
    Case("sample zero images", SAMPLE.replace("--num 4", "--num 0") + " --out {tmp}/g.png", "--num"),
    Case("sample negative batch", SAMPLE + " --batch-size -1 --out {tmp}/g.png", "--batch-size"),
    Case("sample zero steps", SAMPLE + " --steps 0 --out {tmp}/g.png", "--steps"),
    Case("sample huge steps", SAMPLE + " --steps 100000000 --out {tmp}/g.png", "--steps"),
    Case("sample unknown sampler", SAMPLE + " --sampler euler --out {tmp}/g.png", "euler"),
    Case("sample unknown extension", SAMPLE + " --out {tmp}/g.gifx", "extension"),
    Case("sample npz without suffix", SAMPLE + " --npz {tmp}/g.png", ".npz"),
    Case("sample out is a folder", SAMPLE + " --out {tmp}", "folder"),
    Case("sample out is the checkpoint", SAMPLE + " --out {student}", "checkpoint"),
    Case("sample out on a read-only file system", SAMPLE + " --out /proc/rdd-battery/g.png", "cannot write"),
    Case("sample checkpoint missing", SAMPLE.replace("{student}", "{tmp}/none.pt") + " --out {tmp}/g.png", "not found"),
    Case("sample a classifier", SAMPLE.replace("{student}", "{classifier}") + " --out {tmp}/g.png", "classifier checkpoint"),
    Case("sample huge seed", SAMPLE + " --seed 100000000000000000000000 --out {tmp}/g.png", "--seed"),
    Case("sample ok", SAMPLE + " --out {tmp}/g.png --npz {tmp}/g.npz", ok=True),
    Case("eval one sample", EVAL.replace("--num 16", "--num 1"), "--num"),
    Case("eval with the shipped evaluation network", "eval --ckpt {student} --num 16", ok=True),
    Case("eval evalnet missing", EVAL.replace("{evalnet}", "{tmp}/none.pt"), "not found"),
    Case("eval evalnet is a diffusion model", EVAL.replace("{evalnet}", "{teacher}"), "diffusion checkpoint, not an evaluation network"),
    Case("eval evalnet is the distillation classifier", EVAL.replace("{evalnet}", "{classifier}"), "classifier, not an evaluation network"),
    Case("eval inception missing", "eval --ckpt {student} --num 16 --inception-weights {tmp}/none.pth", "not found"),
    Case("eval inception random", "eval --ckpt {student} --num 16 --inception-weights {tmp}/x.pt", "", setup="random_bytes"),
    Case("eval damaged reference", EVAL + " --reference-cache {tmp}/ref.npz", setup="bad_reference", ok=True),
    Case("eval wrong reference", EVAL + " --reference-cache {tmp}/ref.npz", setup="wrong_reference", ok=True),
    Case("eval json is a folder", EVAL + " --json {tmp}", "folder"),
    Case("eval json is the evalnet", EVAL + " --json {evalnet}", "evalnet"),
    Case("eval too few for IS splits", EVAL.replace("--num 16", "--num 3"), "--num"),
    Case("eval ok", EVAL.replace("--num 16", "--num 64") + " --reference-cache {tmp}/ref.npz --json {tmp}/r.json", ok=True),
    Case("export out not empty", "export --ckpt {student} --out {tmp}/exp", "not an empty folder", setup="export_target"),
    Case("export out is a file", "export --ckpt {student} --out {tmp}/run", "not an empty folder", setup="out_is_file"),
    Case("export a classifier", "export --ckpt {classifier} --out {tmp}/exp2", "classifier checkpoint"),
    Case("export into the checkpoint's folder", "export --ckpt {tmp}/run/model.pt --out {tmp}/run", "", setup="teacher_run"),
    Case("export unknown format", "export --ckpt {student} --format onnx --out {tmp}/e", "onnx"),
    Case("report missing folder", "report {tmp}/none", "not found"),
    # --- data --------------------------------------------------------------------------------------
    Case("data root missing", TRAIN.replace("{data}", "{tmp}/none") + " --out {tmp}/o", "data.root"),
    Case("data truncated idx", TRAIN.replace("{data}", "{tmp}/data") + " --out {tmp}/o", "truncated or corrupt", setup="bad_idx"),
    Case("data wrong magic", TRAIN.replace("{data}", "{tmp}/data") + " --out {tmp}/o", "truncated or corrupt", setup="wrong_magic"),
    Case("data labels do not match", TRAIN.replace("{data}", "{tmp}/data") + " --out {tmp}/o", "labels", setup="label_mismatch"),
    Case("classifier data root missing", "train-classifier --config configs/fmnist/classifier.yaml --set data.root={tmp}/none --out {tmp}/o",
         "data.root"),
    Case("classifier batch above data", "train-classifier --config configs/fmnist/classifier.yaml --set data.root={data} "
         "--set classifier.batch_size=5000 --out {tmp}/o", "larger than"),
    # --- environment -------------------------------------------------------------------------------
    Case("env world size text", TRAIN + " --out {tmp}/o", "WORLD_SIZE", env={"WORLD_SIZE": "two"}),
    Case("env world size zero", TRAIN + " --out {tmp}/o", "WORLD_SIZE", env={"WORLD_SIZE": "0"}),
    Case("env world without master", TRAIN + " --out {tmp}/o", "MASTER_ADDR", env={"WORLD_SIZE": "2"}),
    Case("env rank above world", TRAIN + " --out {tmp}/o", "RANK", env={"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "127.0.0.1"}),
    Case("env rank text", TRAIN + " --out {tmp}/o", "RANK", env={"WORLD_SIZE": "2", "RANK": "x", "MASTER_ADDR": "127.0.0.1"}),
    Case("env local rank negative", TRAIN + " --out {tmp}/o", "LOCAL_RANK",
         env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "-1", "MASTER_ADDR": "127.0.0.1"}),
    Case("env master port text", TRAIN + " --out {tmp}/o", "MASTER_PORT",
         env={"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "http"}),
    Case("env master port too big", TRAIN + " --out {tmp}/o", "MASTER_PORT",
         env={"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "70000"}),
    Case("env classifier under torchrun world", "train-evalnet --set data.root={data} --out {tmp}/o", "",
         env={"WORLD_SIZE": "x"}),
    Case("env omp threads text", "sweep --config {cfg} --teacher {teacher} --out {tmp}/o", "OMP_NUM_THREADS",
         env={"OMP_NUM_THREADS": "many"}),
]


@pytest.fixture(scope="module")
def student(teacher, small_fmnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    assert main(["distill", "--config", str(ROOT / "configs/fmnist/distill.yaml"), "--teacher", str(teacher), "--method", "pd",
                 *TINY_STAGE, "--set", f"data.root={small_fmnist}", "--set", "distill.teacher_steps=2",
                 "--set", "distill.iterations=[2]", "--out", str(out)]) == 0
    return out / "model.pt"


def tree(*roots: Path) -> dict:
    """Every file's bytes under the given inputs (the lock only holds a pid)."""
    found = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".lock")
        found.update({p: p.read_bytes() for p in paths})
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case, tmp_path, capsys, monkeypatch, teacher, student, classifier, evalnet, small_fmnist):
    kit = Kit(tmp_path, teacher, student, classifier, evalnet, small_fmnist)
    if case.setup:
        getattr(kit, case.setup)()
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    inputs = tree(teacher.parent, student.parent, classifier.parent, evalnet.parent, tmp_path)
    try:
        code = main(kit.fmt(case.argv))
    except SystemExit as e:  # argparse's refusals exit, as a command line does
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("rdd")]
    if case.ok:
        assert code == 0, err
        return
    assert code != 0 and len(lines) == 1, err
    assert case.needle in lines[0], lines[0]
    assert "failed unexpectedly" not in lines[0], lines[0]
    after = tree(teacher.parent, student.parent, classifier.parent, evalnet.parent, tmp_path)
    assert {p: after.get(p) for p in inputs} == inputs, "a refused command changed its inputs"
    assert not Path("/tmp/rdd-battery-pwned").exists()


def test_sigterm_stops_a_run_in_one_line_and_it_resumes(small_fmnist, tmp_path):
    """A cluster's SIGTERM (preemption, torchrun stopping its workers) ends like Ctrl-C."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    args = [sys.executable, "-m", "rdd.cli", *Kit(tmp_path, *[tmp_path] * 5).fmt(TRAIN.replace("{data}", str(small_fmnist))),
            "--set", "train.iterations=100000", "--set", "train.ckpt_every=2", "--out", str(out)]
    proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "train_state.pt").exists():
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    lines = [line for line in err.splitlines() if line.startswith("rdd")]
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert len(lines) == 1 and "--resume" in lines[0], err
    assert load_checkpoint(out / "train_state.pt")["step"] >= 2
