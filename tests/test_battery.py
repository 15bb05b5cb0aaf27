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
    after: str = ""  # name of a Kit method that checks what the command left (ok cases)


class Kit:
    """The real (tiny) models of the session and a fresh folder per case."""

    def __init__(self, tmp: Path, teacher: Path, student: Path, classifier: Path, evalnet: Path, data: Path):
        self.tmp, self.teacher, self.student, self.classifier, self.evalnet, self.data = tmp, teacher, student, classifier, evalnet, data
        self.kept: dict[Path, bytes] = {}  # a user's files the command must leave as they are, ok or refused

    def fmt(self, text: str) -> list[str]:
        values = dict(teacher=self.teacher, student=self.student, classifier=self.classifier, evalnet=self.evalnet,
                      data=self.data, tmp=self.tmp, cfg=ROOT / "configs/fmnist/distill.yaml", notutf8="\udcff\udcfe",
                      long="n" * 300, port=str(29400 + os.getpid() % 500))
        return [part.format(**values) for part in text.split()]

    def mine(self, path: Path, data: bytes = b"a user's own bytes") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.kept[path] = data
        return path

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

    # --- a user's files in and around the run (step three) ---------------------------------------
    def user_tmp_files(self):
        for name in ("notes.tmp", ".draft.tmp", "sub/.x.tmp", "sub/data.tmp", ".model.pt.123.tmp"):
            self.mine(self.tmp / "run" / name)

    def stale_rdd_temporary(self):
        self.mine(self.tmp / "run" / "notes.txt")
        (self.tmp / "run" / ".rdd-tmp-1-00000000-model.pt.tmp").write_bytes(b"left by a killed run")

    def temporary_gone(self):
        assert not list((self.tmp / "run").glob(".rdd-tmp-*")), "a stale temporary was left"

    def notes_in_run_folders(self):
        self.teacher_run()
        for name in ("grids/notes.md", "snapshots/keep.txt", "tensorboard/README", "notes.md", "grids/step-best.png"):
            self.mine(self.tmp / "run" / name)

    def _link_to_mine(self, name: str):
        self.teacher_run()
        target = self.mine(self.tmp / "mine" / "precious.txt")
        link = self.tmp / "run" / name
        if link.is_dir():
            shutil.rmtree(link)
        else:
            link.unlink(missing_ok=True)
        link.symlink_to(target if name != "grids" else target.parent)

    def lock_link(self):
        self._link_to_mine(".lock")

    def samples_link(self):
        self._link_to_mine("samples.png")

    def metrics_link(self):
        self._link_to_mine("metrics.jsonl")

    def grids_link(self):
        self._link_to_mine("grids")

    def fresh_lock_link(self):
        target = self.mine(self.tmp / "mine" / "precious.txt")
        (self.tmp / "run").mkdir()
        (self.tmp / "run" / ".lock").symlink_to(target)

    def lock_hard_link(self):
        self.teacher_run()
        mine = self.mine(self.tmp / "mine" / "precious.txt")
        (self.tmp / "run" / ".lock").unlink(missing_ok=True)
        os.link(mine, self.tmp / "run" / ".lock")

    def model_hard_link(self):
        self.teacher_run()
        mine = self.mine(self.tmp / "mine" / "precious.pt")
        (self.tmp / "run" / "model.pt").unlink()
        os.link(mine, self.tmp / "run" / "model.pt")

    def metrics_hard_link(self):
        self.teacher_run()
        mine = self.mine(self.tmp / "mine" / "log.jsonl")
        (self.tmp / "run" / "metrics.jsonl").unlink()
        os.link(mine, self.tmp / "run" / "metrics.jsonl")

    def existing_outputs(self):
        for name in ("g.png", "g.npz", "r.json", "report.md"):
            self.mine(self.tmp / name)

    def output_link_to_mine(self):
        target = self.mine(self.tmp / "mine" / "precious.png")
        (self.tmp / "g.png").symlink_to(target)
        (self.tmp / "r.json").symlink_to(target)

    def links_of_inputs(self):
        shutil.copy(self.student, self.tmp / "m.pt")
        os.link(self.tmp / "m.pt", self.tmp / "g.npz")
        os.link(self.tmp / "m.pt", self.tmp / "g.png")
        (self.tmp / "s.png").symlink_to(self.tmp / "m.pt")
        shutil.copy(self.evalnet, self.tmp / "e.pt")
        os.link(self.tmp / "e.pt", self.tmp / "r.json")
        os.link(self.tmp / "e.pt", self.tmp / "ref.npz")

    def report_with_mine(self):
        shutil.copytree(self.student.parent, self.tmp / "runs" / "a")
        self.mine(self.tmp / "runs" / "report.md")

    def report_folder_taken(self):
        shutil.copytree(self.student.parent, self.tmp / "runs" / "a")
        self.mine(self.tmp / "runs" / "report" / "mine.txt")

    def report_code_evalnet(self):
        shutil.copytree(self.student.parent, self.tmp / "runs" / "a")
        self.code_pickle()

    def report_stale_cache(self):
        shutil.copytree(self.student.parent, self.tmp / "runs" / "a")
        (self.tmp / "runs" / "eval").mkdir()
        (self.tmp / "runs" / "eval" / "a.json").write_text('{"fd": 123456.0, "is": 1.0}')

    def report_recomputed(self):
        import json
        cached = json.loads((self.tmp / "runs" / "eval" / "a.json").read_text())
        assert cached["fd"] != 123456.0 and "stamp" in cached, "a stale cached evaluation was reused"
        assert "1.235e+05" not in (self.tmp / "runs" / "report.md").read_text()

    # --- YAML -------------------------------------------------------------------------------------
    def yaml_text(self, text: str, name: str = "c.yaml"):
        (self.tmp / name).write_text(text)

    def yaml_duplicate_key(self):
        self.yaml_text("train:\n  lr: 0.1\n  lr: 0.2\n")

    def yaml_duplicate_section(self):
        self.yaml_text("train: {lr: 0.1}\ndata: {resolution: 16}\ntrain: {iterations: 5}\n")

    def yaml_octal(self):
        self.yaml_text("data: {resolution: 010}\n")

    def yaml_python_tag(self):
        self.yaml_text("train: !!python/object/apply:os.system ['touch /tmp/rdd-battery-pwned']\n")

    def yaml_str_tag(self):
        self.yaml_text("train: {iterations: !!str 5}\n")

    def yaml_binary_tag(self):
        self.yaml_text("name: !!binary aGVsbG8=\n")

    def yaml_local_tag(self):
        self.yaml_text("train: !mine {iterations: 5}\n")

    def yaml_alias_bomb(self):
        lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
        lines += [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]" for i in range(8)]
        self.yaml_text("\n".join(lines) + "\n")

    def yaml_anchor(self):
        self.yaml_text("train: &t {iterations: 5}\ndistill: *t\n")

    def yaml_deep(self):
        self.yaml_text("train: " + "[" * 200 + "]" * 200 + "\n")

    def yaml_huge(self):
        self.yaml_text("name: x\n" + "# padding\n" * 200_000)

    def yaml_int_key(self):
        self.yaml_text("train: {1: 2}\n")

    def yaml_yes(self):
        self.yaml_text("data: {hflip: yes}\n")

    def yaml_base_duplicate(self):
        self.yaml_text("train: {lr: 0.1}\ntrain: {lr: 0.2}\n", "base.yaml")
        self.yaml_text("base: base.yaml\n")

    def yaml_tab(self):
        self.yaml_text("train:\n\tlr: 0.1\n")

    def yaml_date(self):
        self.yaml_text("name: 2024-01-01\ntrain: {seed: 2024-01-01}\n")

    def yaml_multi_document(self):
        self.yaml_text("train: {lr: 0.1}\n---\ntrain: {lr: 0.2}\n")

    # --- checkpoints and records ------------------------------------------------------------------
    def _model_with(self, change):
        state = load_checkpoint(self.student)
        change(state)
        save_checkpoint(state, self.tmp / "x.pt")

    def model_config_list(self):
        self._model_with(lambda s: s.update(config=[1, 2]))

    def model_config_bad_value(self):
        self._model_with(lambda s: s["config"]["train"].update(lr=-1.0))

    def model_config_unknown_key(self):
        self._model_with(lambda s: s["config"].update(extra={"a": 1}))

    def model_weights_list(self):
        self._model_with(lambda s: s.update(model=[torch.ones(2)]))

    def model_weight_text(self):
        self._model_with(lambda s: s["model"].update({next(iter(s["model"])): "not a tensor"}))

    def model_weight_int(self):
        self._model_with(lambda s: s["model"].update({next(iter(s["model"])): s["model"][next(iter(s["model"]))].long()}))

    def _state_with(self, change):
        self.teacher_run()
        state = load_checkpoint(self.tmp / "run" / "train_state.pt")
        change(state)
        save_checkpoint(state, self.tmp / "run" / "train_state.pt")

    def state_step_text(self):
        self._state_with(lambda s: s.update(step="150"))

    def state_step_negative(self):
        self._state_with(lambda s: s.update(step=-1))

    def state_data_list(self):
        self._state_with(lambda s: s.update(data=[0, 0]))

    def _classifier_with(self, change, source=None):
        state = load_checkpoint(source or self.classifier)
        change(state)
        save_checkpoint(state, self.tmp / "x.pt")

    def classifier_channels_text(self):
        self._classifier_with(lambda s: s.update(in_channels="1"))

    def classifier_arch_unknown(self):
        self._classifier_with(lambda s: s.update(arch="resnet-huge"))

    def classifier_no_classes(self):
        self._classifier_with(lambda s: s.pop("num_classes"))

    def classifier_three_channels(self):
        from rdd.classifier import build_classifier
        state = load_checkpoint(self.classifier)
        model = build_classifier(state["arch"], 3, state["num_classes"], state.get("stem", "bare"))
        self._classifier_with(lambda s: s.update(in_channels=3, model=model.state_dict()))

    def evalnet_resolution_text(self):
        self._classifier_with(lambda s: s.update(resolution="16"), self.evalnet)

    def evalnet_no_channels(self):
        self._classifier_with(lambda s: s.pop("in_channels"), self.evalnet)

    def _run_json(self, text: str):
        self.teacher_run()
        (self.tmp / "run" / "run.json").write_text(text)

    def run_json_duplicate(self):
        recorded = (self.teacher.parent / "run.json").read_text()
        self._run_json(recorded.replace('{\n  "kind"', '{\n  "iterations": 1,\n  "kind"', 1))

    def run_json_no_digest(self):
        import json
        recorded = json.loads((self.teacher.parent / "run.json").read_text())
        recorded["files"] = {"teacher": {"path": "x"}}
        self._run_json(json.dumps(recorded))

    def run_json_config_list(self):
        self._run_json('{"config": [], "meta": {}, "files": {}}')

    def chain_json_damaged(self):
        (self.tmp / "o").mkdir()
        (self.tmp / "o" / "chain.json").write_text('{"stages": {"a": 1}, "stages": {}}')

    def sweep_result_damaged(self):
        folder = self.tmp / "o" / "runs" / "default" / "seed0"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text("{cut short")

    def unfinished_stage(self):
        import json
        stage = self.tmp / "chain" / "stage-2to1"
        shutil.copytree(self.student.parent, stage)
        recorded = json.loads((stage / "run.json").read_text())
        (stage / "run.json").write_text(json.dumps({**recorded, "finished": False}))
        (stage / "samples.png").unlink()  # SIGTERM came right after model.pt

    def stage_completed(self):
        assert (self.tmp / "chain" / "stage-2to1" / "samples.png").is_file(), "the unfinished stage was counted done"

    # --- diffusers folders ------------------------------------------------------------------------
    def _diffusers(self, file: str, change):
        import json
        from rdd.model_io import export_diffusers
        folder = export_diffusers(self.student, self.tmp / "dm")
        path = folder / file
        data = json.loads(path.read_text())
        changed = change(data)
        path.write_text(changed if isinstance(changed, str) else json.dumps(data))

    def _unet(self, **fields):
        self._diffusers("unet/config.json", lambda d: d.update(fields))

    def _scheduler(self, **fields):
        self._diffusers("scheduler/scheduler_config.json", lambda d: d.update(fields))

    def _index(self, **fields):
        self._diffusers("model_index.json", lambda d: d.update(fields))

    def unet_groups_zero(self):
        self._unet(norm_num_groups=0)

    def unet_groups_odd(self):
        self._unet(norm_num_groups=7)

    def unet_widths_empty(self):
        self._unet(block_out_channels=[])

    def unet_widths_text(self):
        self._unet(block_out_channels="abc")

    def unet_layers_negative(self):
        self._unet(layers_per_block=-1)

    def unet_channels_zero(self):
        self._unet(in_channels=0, out_channels=0)

    def unet_size_zero(self):
        self._unet(sample_size=0)

    def unet_size_rectangle(self):
        self._unet(sample_size=[16, 32])

    def unet_classes_text(self):
        self._unet(num_class_embeds="ten")

    def unet_block_types_count(self):
        self._diffusers("unet/config.json", lambda d: d.update(down_block_types=d["down_block_types"] * 2))

    def unet_eps_bool(self):
        self._unet(norm_eps=True)

    def unet_not_json(self):
        self._diffusers("unet/config.json", lambda d: "{not json")

    def unet_list(self):
        self._diffusers("unet/config.json", lambda d: "[1, 2]")

    def unet_duplicate(self):
        self._diffusers("unet/config.json", lambda d: '{"_class_name": "UNet2DModel", "in_channels": 1, "in_channels": 3}')

    def scheduler_steps_zero(self):
        self._scheduler(num_train_timesteps=0)

    def scheduler_steps_text(self):
        self._scheduler(num_train_timesteps="1000")

    def scheduler_beta_end(self):
        self._scheduler(beta_end=5.0, trained_betas=None)

    def scheduler_beta_start(self):
        self._scheduler(beta_start=-1, trained_betas=None)

    def scheduler_prediction(self):
        self._scheduler(prediction_type="noise")

    def scheduler_betas_nan(self):
        self._scheduler(trained_betas=[float("nan")] * 10)

    def scheduler_betas_big(self):
        self._scheduler(trained_betas=[2.0] * 10)

    def scheduler_zero_snr_text(self):
        self._scheduler(rescale_betas_zero_snr="yes")

    def scheduler_duplicate(self):
        self._diffusers("scheduler/scheduler_config.json", lambda d: '{"num_train_timesteps": 10, "num_train_timesteps": 20}')

    def index_steps_text(self):
        self._index(sampling_steps="two")

    def index_steps_zero(self):
        self._index(sampling_steps=0)

    def index_schedule(self):
        self._index(schedule="weird")

    def index_component_text(self):
        self._index(unet="diffusers")

    def index_duplicate(self):
        self._diffusers("model_index.json", lambda d: '{"schedule": "cosine", "schedule": "discrete"}')

    # --- reference caches -------------------------------------------------------------------------
    def _reference(self, mu, sigma):
        import numpy as np
        from rdd.metrics import reference_key
        from rdd.model_io import load_diffusion_model
        _, cfg, _ = load_diffusion_model(self.student)
        np.savez(self.tmp / "ref.npz", key=reference_key(self.evalnet, cfg.data), mu=mu, sigma=sigma)

    def reference_wrong_shape(self):
        import numpy as np
        self._reference(np.zeros(3), np.eye(3))

    def reference_nan(self):
        import numpy as np
        self._reference(np.full(128, np.nan), np.eye(128))

    def reference_sigma_shape(self):
        import numpy as np
        self._reference(np.zeros(128), np.eye(64))

    def reference_integers(self):
        import numpy as np
        self._reference(np.zeros(128, dtype=np.int64), np.eye(128, dtype=np.int64))

    # --- benchmark ----------------------------------------------------------------------------------
    def benchmark_steps(self):
        self.yaml_text("teacher_steps: 16\npd_to: 4\nteacher_ddim_steps: [1, 20000]\n", "b.yaml")

    def benchmark_duplicate(self):
        self.yaml_text("pd_to: 4\npd_to: 8\n", "b.yaml")


TRAIN = "train " + " ".join(TINY) + " --set data.root={data} --set train.iterations=2"
TRAIN_FROM_FILE = "train --config {tmp}/c.yaml --out {tmp}/o"  # the config file a case wrote
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
    Case("config is a folder", TRAIN_FROM_FILE, "is a folder", setup="config_dir"),
    Case("config not text", TRAIN_FROM_FILE, "not a text", setup="binary_config"),
    Case("config yaml syntax", TRAIN_FROM_FILE, "YAML", setup="yaml_syntax"),
    Case("config top-level list", TRAIN_FROM_FILE, "mapping", setup="yaml_list"),
    Case("config section scalar", TRAIN_FROM_FILE, "train", setup="yaml_section_scalar"),
    Case("config base missing", TRAIN_FROM_FILE, "nowhere.yaml", setup="base_missing"),
    Case("config base cycle", TRAIN_FROM_FILE, "base", setup="base_cycle"),
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
    Case("sample a student with a teacher's sampler", SAMPLE + " --sampler dpm-solver --out {tmp}/g.png", "--sampler ddim"),
    Case("eval a student with a teacher's sampler", EVAL + " --sampler pndm", "--sampler ddim"),
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


DISTILL_RDD = DISTILL.replace("--method pd", "--method rdd")
PROGRESSIVE = DISTILL.replace("distill ", "progressive ", 1) + " --to 1"
DIFFUSERS_SAMPLE = "sample --ckpt {tmp}/dm --num 4 --out {tmp}/g.png"
DIST = {"WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "{port}", "RDD_DIST_TIMEOUT": "1"}
SWEEP = "sweep --config {cfg} --teacher {teacher} --evalnet {evalnet} " + " ".join(TINY_STAGE) + " --set data.root={data}"

# Step three (issue 25): a user's files, strict readers, limits before the work, runs that tell the truth.
CASES += [
    # --- a user's files: written and deleted only what rdd made -------------------------------------
    Case("user tmp files in a fresh out survive", TRAIN + " --out {tmp}/run", setup="user_tmp_files", ok=True),
    Case("rdd's own stale temporary is cleaned", TRAIN + " --out {tmp}/run", setup="stale_rdd_temporary", ok=True,
         after="temporary_gone"),
    Case("overwrite keeps a user's notes in grids/", TRAIN + " --out {tmp}/run --overwrite", setup="notes_in_run_folders", ok=True),
    Case("lock is a link to a user's file", TRAIN + " --out {tmp}/run --overwrite", "symbolic link", setup="lock_link"),
    Case("lock is a hard link of a user's file", TRAIN + " --out {tmp}/run --overwrite", "hard link", setup="lock_hard_link"),
    Case("lock is a link in a fresh folder", TRAIN + " --out {tmp}/run", "symbolic link", setup="fresh_lock_link"),
    Case("samples.png is a link, overwrite", TRAIN + " --out {tmp}/run --overwrite", "symbolic link", setup="samples_link"),
    Case("metrics.jsonl is a link, resume", TRAIN + " --out {tmp}/run --resume", "symbolic link", setup="metrics_link"),
    Case("grids is a link to a user's folder", TRAIN + " --out {tmp}/run --overwrite", "symbolic link", setup="grids_link"),
    Case("model.pt is a hard link of a user's file", TRAIN + " --out {tmp}/run --overwrite", "hard link", setup="model_hard_link"),
    Case("metrics.jsonl is a hard link, resume", TRAIN + " --out {tmp}/run --resume", "hard link", setup="metrics_hard_link"),
    Case("sample over an existing picture", SAMPLE + " --out {tmp}/g.png", "already exists", setup="existing_outputs"),
    Case("sample over an existing npz", SAMPLE + " --npz {tmp}/g.npz", "already exists", setup="existing_outputs"),
    Case("sample over a link to a user's file", SAMPLE + " --out {tmp}/g.png", "already exists", setup="output_link_to_mine"),
    Case("sample overwrite replaces a link, not its target", SAMPLE + " --out {tmp}/g.png --overwrite", setup="output_link_to_mine",
         ok=True),
    Case("sample npz is a hard link of the checkpoint", SAMPLE.replace("{student}", "{tmp}/m.pt") + " --npz {tmp}/g.npz --overwrite",
         "checkpoint", setup="links_of_inputs"),
    Case("sample out is a hard link of the checkpoint", SAMPLE.replace("{student}", "{tmp}/m.pt") + " --out {tmp}/g.png --overwrite",
         "checkpoint", setup="links_of_inputs"),
    Case("sample out is a link to the checkpoint", SAMPLE.replace("{student}", "{tmp}/m.pt") + " --out {tmp}/s.png --overwrite",
         "checkpoint", setup="links_of_inputs"),
    Case("eval over an existing json", EVAL + " --json {tmp}/r.json", "already exists", setup="existing_outputs"),
    Case("eval json is a hard link of the evalnet", EVAL.replace("{evalnet}", "{tmp}/e.pt") + " --json {tmp}/r.json --overwrite",
         "evalnet", setup="links_of_inputs"),
    Case("eval reference cache is the evalnet", EVAL + " --reference-cache {evalnet}", "evalnet"),
    Case("eval reference cache is the checkpoint", EVAL + " --reference-cache {student}", "checkpoint"),
    Case("eval reference cache is a hard link of the evalnet", EVAL.replace("{evalnet}", "{tmp}/e.pt")
         + " --reference-cache {tmp}/ref.npz", "evalnet", setup="links_of_inputs"),
    Case("eval json overwrite replaces a link, not its target", EVAL + " --json {tmp}/r.json --overwrite",
         setup="output_link_to_mine", ok=True),
    Case("report over a user's report.md", "report {tmp}/runs", "already exists", setup="report_with_mine"),
    Case("report over a report folder", "report {tmp}/runs", "already exists", setup="report_folder_taken"),
    Case("report does not reuse a stale evaluation", "report {tmp}/runs --evalnet {evalnet} --num 16", setup="report_stale_cache",
         ok=True, after="report_recomputed"),
    Case("report with an evalnet that carries code", "report {tmp}/runs --evalnet {tmp}/x.pt --num 16", "code objects",
         setup="report_code_evalnet"),
    # --- YAML files, read strictly --------------------------------------------------------------------
    Case("yaml duplicate key", TRAIN_FROM_FILE, "twice", setup="yaml_duplicate_key"),
    Case("yaml duplicate section", TRAIN_FROM_FILE, "twice", setup="yaml_duplicate_section"),
    Case("yaml 1.1 octal is ten", TRAIN_FROM_FILE, "data.resolution is 10", setup="yaml_octal"),
    Case("yaml python tag", TRAIN_FROM_FILE, "tags", setup="yaml_python_tag"),
    Case("yaml str tag", TRAIN_FROM_FILE, "tags", setup="yaml_str_tag"),
    Case("yaml binary tag", TRAIN_FROM_FILE, "tags", setup="yaml_binary_tag"),
    Case("yaml local tag", TRAIN_FROM_FILE, "tags", setup="yaml_local_tag"),
    Case("yaml alias bomb", TRAIN_FROM_FILE, "aliases", setup="yaml_alias_bomb"),
    Case("yaml anchor", TRAIN_FROM_FILE, "aliases", setup="yaml_anchor"),
    Case("yaml nested 200 deep", TRAIN_FROM_FILE, "nested deeper", setup="yaml_deep"),
    Case("yaml of two megabytes", TRAIN_FROM_FILE, "larger than", setup="yaml_huge"),
    Case("yaml integer key", TRAIN_FROM_FILE, "unknown config key 'train.1'", setup="yaml_int_key"),
    Case("yaml yes is a word", TRAIN_FROM_FILE, "data.hflip", setup="yaml_yes"),
    Case("yaml duplicate in a base file", TRAIN_FROM_FILE, "base.yaml", setup="yaml_base_duplicate"),
    Case("yaml tab indent", TRAIN_FROM_FILE, "YAML", setup="yaml_tab"),
    Case("yaml date is a string", TRAIN_FROM_FILE, "train.seed", setup="yaml_date"),
    Case("yaml two documents", TRAIN_FROM_FILE, "YAML", setup="yaml_multi_document"),
    Case("set broken yaml", TRAIN + " --set train.lr=[1, --out {tmp}/o", "not valid YAML"),
    Case("set tag", TRAIN + " --set train.lr=!!float --out {tmp}/o", "tags"),
    Case("set python tag", TRAIN + " --set train.lr=!!python/name:os.system --out {tmp}/o", "tags"),
    Case("set alias", TRAIN + " --set train.lr=*a --out {tmp}/o", "YAML"),
    Case("set empty key part", TRAIN + " --set train..lr=1 --out {tmp}/o", "section.key"),
    Case("set leading dot", TRAIN + " --set .lr=1 --out {tmp}/o", "section.key"),
    Case("set section to a number", TRAIN + " --set train=5 --out {tmp}/o", "train"),
    Case("set octal resolution", TRAIN + " --set data.resolution=010 --out {tmp}/o", "data.resolution is 10"),
    Case("set duplicate key in a mapping", TRAIN + ' --set train={{"lr":1,"lr":2}} --out {tmp}/o', "twice"),
    # --- values nobody should accept ------------------------------------------------------------------
    Case("empty data.root", TRAIN + " --set data.root= --out {tmp}/o", "data.root"),
    Case("empty quoted data.root", TRAIN + " --set data.root=\"\" --out {tmp}/o", "data.root"),
    Case("ema decay rounds to 1", TRAIN + " --set train.ema_decay=0.99999999999 --out {tmp}/o", "float32"),
    Case("resolution 65536", TRAIN + " --set data.resolution=65536 --out {tmp}/o", "at most"),
    Case("grid of 1e8 images", TRAIN + " --set train.num_grid=100000000 --out {tmp}/o", "train.num_grid"),
    Case("sample steps 2e9", TRAIN + " --set train.sample_steps=2000000000 --out {tmp}/o", "train.sample_steps"),
    Case("queue of 2e9 rows", DISTILL_RDD + " --set distill.queue_size=2000000000 --out {tmp}/o", "memory"),
    Case("batch beyond memory", TRAIN + " --set data.resolution=4096 --set train.batch_size=2000 --out {tmp}/o", "memory"),
    Case("snapshot after the last iteration", TRAIN + " --set train.snapshot_at=[5] --out {tmp}/o", "snapshot_at"),
    Case("snapshot at the last iteration", TRAIN + " --set train.snapshot_at=[2] --out {tmp}/o", "snapshot_at"),
    Case("distill snapshot after the stage", DISTILL + " --set train.snapshot_at=[3] --out {tmp}/o", "snapshot_at"),
    Case("out is empty", TRAIN + " --out=", "--out is empty"),
    Case("out not utf-8", TRAIN + " --out {tmp}/{notutf8}", "UTF-8"),
    Case("out name too long", TRAIN + " --out {tmp}/{long}", "bytes"),
    Case("json name too long", EVAL + " --json {tmp}/{long}.json", "bytes"),
    Case("npz is empty", SAMPLE + " --npz=", "--npz is empty"),
    Case("config path is empty", "train --config= --out {tmp}/o", "--config is empty"),
    Case("teacher path is empty", DISTILL.replace("{teacher}", "x") .replace("--teacher x", "--teacher=") + " --out {tmp}/o",
         "--teacher is empty"),
    Case("sample ckpt not utf-8", SAMPLE.replace("{student}", "{tmp}/{notutf8}.pt") + " --out {tmp}/g.png", "UTF-8"),
    # --- rdd checkpoints and records --------------------------------------------------------------------
    Case("model config is a list", SAMPLE.replace("{student}", "{tmp}/x.pt") + " --out {tmp}/g.png", "stored config",
         setup="model_config_list"),
    Case("model config bad value", SAMPLE.replace("{student}", "{tmp}/x.pt") + " --out {tmp}/g.png", "train.lr",
         setup="model_config_bad_value"),
    Case("model config unknown key", SAMPLE.replace("{student}", "{tmp}/x.pt") + " --out {tmp}/g.png", "invalid config",
         setup="model_config_unknown_key"),
    Case("model weights are a list", SAMPLE.replace("{student}", "{tmp}/x.pt") + " --out {tmp}/g.png", "names to tensors",
         setup="model_weights_list"),
    Case("model weight is text", SAMPLE.replace("{student}", "{tmp}/x.pt") + " --out {tmp}/g.png", "names to tensors",
         setup="model_weight_text"),
    Case("model weight is integer", SAMPLE.replace("{student}", "{tmp}/x.pt") + " --out {tmp}/g.png", "dtype",
         setup="model_weight_int"),
    Case("teacher config bad value", DISTILL.replace("{teacher}", "{tmp}/x.pt") + " --out {tmp}/o", "train.lr",
         setup="model_config_bad_value"),
    Case("state step is text", TRAIN.replace("iterations=2", "iterations=151") + " --set train.lr=1e-3 --set train.ckpt_every=1000"
         + " --out {tmp}/run --resume", "'step'", setup="state_step_text"),
    Case("state step negative", TRAIN.replace("iterations=2", "iterations=151") + " --set train.lr=1e-3 --set train.ckpt_every=1000"
         + " --out {tmp}/run --resume", "step", setup="state_step_negative"),
    Case("state data is a list", TRAIN.replace("iterations=2", "iterations=151") + " --set train.lr=1e-3 --set train.ckpt_every=1000"
         + " --out {tmp}/run --resume", "'data'", setup="state_data_list"),
    Case("classifier channels as text", DISTILL_RDD.replace("{classifier}", "{tmp}/x.pt") + " --out {tmp}/o", "in_channels",
         setup="classifier_channels_text"),
    Case("classifier unknown arch", DISTILL_RDD.replace("{classifier}", "{tmp}/x.pt") + " --out {tmp}/o", "arch",
         setup="classifier_arch_unknown"),
    Case("classifier without a class count", DISTILL_RDD.replace("{classifier}", "{tmp}/x.pt") + " --out {tmp}/o", "num_classes",
         setup="classifier_no_classes"),
    Case("classifier for 3-channel images", DISTILL_RDD.replace("{classifier}", "{tmp}/x.pt") + " --out {tmp}/o", "channel",
         setup="classifier_three_channels"),
    Case("evalnet resolution as text", EVAL.replace("{evalnet}", "{tmp}/x.pt"), "resolution", setup="evalnet_resolution_text"),
    Case("evalnet without channels", EVAL.replace("{evalnet}", "{tmp}/x.pt"), "in_channels", setup="evalnet_no_channels"),
    Case("run.json duplicate key", TRAIN + " --out {tmp}/run --resume", "twice", setup="run_json_duplicate"),
    Case("run.json without digests", TRAIN + " --out {tmp}/run --resume", "sha256", setup="run_json_no_digest"),
    Case("run.json config is a list", TRAIN + " --out {tmp}/run --resume", "not an rdd run record", setup="run_json_config_list"),
    Case("chain.json duplicate key", PROGRESSIVE + " --out {tmp}/o", "twice", setup="chain_json_damaged"),
    Case("sweep result damaged", SWEEP + " --out {tmp}/o", "not valid JSON", setup="sweep_result_damaged"),
    # --- diffusers folders --------------------------------------------------------------------------------
    Case("unet norm_num_groups 0", DIFFUSERS_SAMPLE, "norm_num_groups", setup="unet_groups_zero"),
    Case("unet norm_num_groups does not divide", DIFFUSERS_SAMPLE, "does not divide", setup="unet_groups_odd"),
    Case("unet no widths", DIFFUSERS_SAMPLE, "block_out_channels", setup="unet_widths_empty"),
    Case("unet widths text", DIFFUSERS_SAMPLE, "block_out_channels", setup="unet_widths_text"),
    Case("unet negative layers", DIFFUSERS_SAMPLE, "layers_per_block", setup="unet_layers_negative"),
    Case("unet zero channels", DIFFUSERS_SAMPLE, "channels", setup="unet_channels_zero"),
    Case("unet size 0", DIFFUSERS_SAMPLE, "sample_size", setup="unet_size_zero"),
    Case("unet rectangular size", DIFFUSERS_SAMPLE, "sample_size", setup="unet_size_rectangle"),
    Case("unet class count text", DIFFUSERS_SAMPLE, "num_class_embeds", setup="unet_classes_text"),
    Case("unet block types do not match widths", DIFFUSERS_SAMPLE, "entries", setup="unet_block_types_count"),
    Case("unet norm_eps true", DIFFUSERS_SAMPLE, "norm_eps", setup="unet_eps_bool"),
    Case("unet config not json", DIFFUSERS_SAMPLE, "not valid JSON", setup="unet_not_json"),
    Case("unet config a list", DIFFUSERS_SAMPLE, "JSON object", setup="unet_list"),
    Case("unet config duplicate key", DIFFUSERS_SAMPLE, "twice", setup="unet_duplicate"),
    Case("scheduler zero timesteps", DIFFUSERS_SAMPLE, "num_train_timesteps", setup="scheduler_steps_zero"),
    Case("scheduler timesteps text", DIFFUSERS_SAMPLE, "num_train_timesteps", setup="scheduler_steps_text"),
    Case("scheduler beta_end 5", DIFFUSERS_SAMPLE, "beta_end", setup="scheduler_beta_end"),
    Case("scheduler negative beta_start", DIFFUSERS_SAMPLE, "beta_start", setup="scheduler_beta_start"),
    Case("scheduler prediction type", DIFFUSERS_SAMPLE, "prediction_type", setup="scheduler_prediction"),
    Case("scheduler nan betas", DIFFUSERS_SAMPLE, "trained_betas", setup="scheduler_betas_nan"),
    Case("scheduler betas above 1", DIFFUSERS_SAMPLE, "trained_betas", setup="scheduler_betas_big"),
    Case("scheduler zero snr text", DIFFUSERS_SAMPLE, "rescale_betas_zero_snr", setup="scheduler_zero_snr_text"),
    Case("scheduler duplicate key", DIFFUSERS_SAMPLE, "twice", setup="scheduler_duplicate"),
    Case("model_index steps text", DIFFUSERS_SAMPLE, "sampling_steps", setup="index_steps_text"),
    Case("model_index steps 0", DIFFUSERS_SAMPLE, "sampling_steps", setup="index_steps_zero"),
    Case("model_index schedule", DIFFUSERS_SAMPLE, "schedule", setup="index_schedule"),
    Case("model_index component text", DIFFUSERS_SAMPLE, "'unet'", setup="index_component_text"),
    Case("model_index duplicate key", DIFFUSERS_SAMPLE, "twice", setup="index_duplicate"),
    Case("diffusers teacher beta_end 5", DISTILL.replace("{teacher}", "{tmp}/dm") + " --out {tmp}/o", "beta_end",
         setup="scheduler_beta_end"),
    # --- reference caches: the right stamp, wrong contents -------------------------------------------------
    Case("reference of the wrong size", EVAL + " --reference-cache {tmp}/ref.npz", setup="reference_wrong_shape", ok=True),
    Case("reference with nan", EVAL + " --reference-cache {tmp}/ref.npz", setup="reference_nan", ok=True),
    Case("reference covariance of the wrong size", EVAL + " --reference-cache {tmp}/ref.npz", setup="reference_sigma_shape", ok=True),
    Case("reference of integers", EVAL + " --reference-cache {tmp}/ref.npz", setup="reference_integers", ok=True),
    # --- limits said before the work -------------------------------------------------------------------------
    Case("sample 1e9 images", SAMPLE.replace("--num 4", "--num 1000000000") + " --out {tmp}/g.png", "memory"),
    Case("eval 1e9 images", EVAL.replace("--num 16", "--num 1000000000"), "memory"),
    Case("unwritable RDD_CACHE", EVAL, "reference cache", env={"RDD_CACHE": "/proc/rdd-battery"}),
    Case("unwritable HOME", EVAL, "reference cache", env={"RDD_CACHE": "", "XDG_CACHE_HOME": "", "HOME": "/proc/rdd-battery"}),
    Case("sweep evalnet carries code", SWEEP.replace("{evalnet}", "{tmp}/x.pt") + " --out {tmp}/o", "code objects",
         setup="code_pickle"),
    Case("sweep evalnet is the classifier", SWEEP.replace("{evalnet}", "{classifier}") + " --out {tmp}/o", "not an evaluation network"),
    Case("benchmark sampler steps out of range", "benchmark {tmp}/b.yaml", "teacher_ddim_steps[1]", setup="benchmark_steps"),
    Case("benchmark duplicate key", "benchmark {tmp}/b.yaml", "twice", setup="benchmark_duplicate"),
    Case("peers never come", TRAIN + " --out {tmp}/o", "could not reach", env={**DIST, "RANK": "0"}),
    Case("no master to reach", TRAIN + " --out {tmp}/o", "could not reach", env={**DIST, "RANK": "1"}),
    Case("dist timeout text", TRAIN + " --out {tmp}/o", "RDD_DIST_TIMEOUT", env={**DIST, "RANK": "0", "RDD_DIST_TIMEOUT": "soon"}),
    Case("dist timeout zero", TRAIN + " --out {tmp}/o", "RDD_DIST_TIMEOUT", env={**DIST, "RANK": "0", "RDD_DIST_TIMEOUT": "0"}),
    Case("empty master address", TRAIN + " --out {tmp}/o", "MASTER_ADDR", env={**DIST, "RANK": "0", "MASTER_ADDR": ""}),
    Case("blank master address", TRAIN + " --out {tmp}/o", "MASTER_ADDR", env={**DIST, "RANK": "0", "MASTER_ADDR": "  "}),
    Case("empty world size", TRAIN + " --out {tmp}/o", "WORLD_SIZE", env={"WORLD_SIZE": ""}),
    Case("empty local rank", TRAIN + " --out {tmp}/o", "LOCAL_RANK", env={**DIST, "RANK": "0", "LOCAL_RANK": ""}),
    Case("signed rank", TRAIN + " --out {tmp}/o", "RANK", env={**DIST, "RANK": "+1"}),
    # --- runs that tell the truth ------------------------------------------------------------------------------
    Case("resume a folder that does not exist", TRAIN + " --out {tmp}/typo --resume", "does not exist"),
    Case("resume an empty folder", TRAIN + " --out {tmp} --resume", "holds no run"),
    Case("distill resume a folder that does not exist", DISTILL + " --out {tmp}/typo --resume", "does not exist"),
    Case("classifier resume a folder that does not exist", "train-classifier --set data.root={data} --out {tmp}/typo --resume",
         "does not exist"),
    Case("evalnet resume a folder that does not exist", "train-evalnet --set data.root={data} --out {tmp}/typo --resume",
         "does not exist"),
    Case("stage cut short after model.pt is finished on rerun", PROGRESSIVE + " --out {tmp}/chain", setup="unfinished_stage",
         ok=True, after="stage_completed"),
    Case("sweep seeds twice", SWEEP + " --seeds 0,0 --out {tmp}/o", "twice"),
    Case("sweep grid over train.seed", SWEEP + " --grid train.seed=1,2 --out {tmp}/o", "--seeds"),
    Case("sweep eval-at after the last iteration", SWEEP + " --set distill.iterations=[2] --eval-at 5 --out {tmp}/o", "--eval-at"),
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
        monkeypatch.setenv(key, value.format(port=kit.fmt("{port}")[0]))
    inputs = tree(teacher.parent, student.parent, classifier.parent, evalnet.parent, tmp_path)
    try:
        code = main(kit.fmt(case.argv))
    except SystemExit as e:  # argparse's refusals exit, as a command line does
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("rdd")]
    for path, data in kit.kept.items():  # ok or refused: a user's file is never changed or deleted
        assert path.read_bytes() == data, f"the user's file {path} was changed or deleted"
    if case.ok:
        assert code == 0, err
        if case.after:
            getattr(kit, case.after)()
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
