"""Sample quality: domain FD/IS with the independent evaluation network, FID/IS/KID with Inception-v3.

Domain metrics use `rdd train-evalnet`'s CNN: FD between its penultimate features of generated and
test images, IS from its logits. The test split's statistics are computed once and cached to an .npz
stamped with the evalnet's checksum and the data config, so a changed network or data set recomputes.
Caches live in rdd's own cache folder (`cache_dir`), never beside an input: the shipped assets stay as
they are, and a read-only assets folder works.
Standard FID/IS/KID go through torch-fidelity's Inception-v3 from a local weights file (no download);
torch-fidelity caches the training set's features (the paper's FID reference) under `cache_root`, named by the same kind of stamp.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from rdd.checkpoint import load_checkpoint
from rdd.config import DataConfig, command_line_keys, with_data_overrides
from rdd.data import folder_stamp, load_dataset
from rdd.distributed import DistContext, default_device
from rdd.errors import RddError
from rdd.files import cache_dir, check_writable, file_digest, write_atomic
from rdd.layout import ASSETS, CLASSIFIER_FILE, EVALNET_FILE, MODEL_FILE
from rdd.sampling import to_uint8_nhwc

EVALNET_SEED_OFFSET = 1000  # the evalnet never shares the distillation classifier's seed
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's converted TF Inception


# ----------------------------------------------------------------------------------------------
# Arithmetic

def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of (N, D) features."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), through torch-fidelity's implementation."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    stats = [{"mu": np.asarray(m, np.float64), "sigma": np.asarray(s, np.float64)} for m, s in ((mu1, sigma1), (mu2, sigma2))]
    return fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID]


IS_SPLITS = 10
MIN_SAMPLES = IS_SPLITS  # IS averages over 10 splits, FD needs a covariance: fewer cannot be computed


def check_sample_count(num: int, flag: str = "--num-samples") -> None:
    if num < MIN_SAMPLES:
        raise RddError(f"{flag} {num}: FD and IS need at least {MIN_SAMPLES} samples (IS averages over {IS_SPLITS} splits); "
                       "use thousands for numbers worth comparing")


def check_finite_result(result: dict, num: int) -> None:
    """Numbers that could not be computed are refused, never written as nan."""
    bad = [key for key, value in result.items() if isinstance(value, float) and not np.isfinite(value)]
    if bad:
        raise RddError(f"{', '.join(bad)} could not be computed from {num} samples (nan or inf); use more samples (--num-samples)")


def inception_score(logits, splits: int = IS_SPLITS) -> tuple[float, float]:
    """exp(E KL(p(y|x) || p(y))) per split of the logits: (mean, std) over splits."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    out = isc_features_to_metric(torch.as_tensor(logits), splits=splits, shuffle=False)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


# ----------------------------------------------------------------------------------------------
# Cache stamps: a cache is reused only for the same network weights and data

def reference_key(weights: str | Path, data: DataConfig, split: str = "test") -> str:
    """Checksum of the network + the data fields that change the reference images."""
    fields = {k: v for k, v in dataclasses.asdict(data).items() if k not in ("num_workers", "hflip", "holdout")}
    if split != "test" or data.dataset == "folder":  # a folder's test split is its held-out images
        fields.update(split=split, holdout=data.holdout)
    if data.dataset == "folder":  # its files, which may change under the same path
        fields.update(files=folder_stamp(data))
    return hashlib.sha256(f"{file_digest(weights)}|{json.dumps(fields, sort_keys=True)}".encode()).hexdigest()[:16]


def _image_batches(images, batch_size: int):
    """Batches of [-1, 1] images from a tensor or from a data set of (image, label)."""
    if isinstance(images, torch.Tensor):
        yield from images.split(batch_size)
    else:
        for x, _ in DataLoader(images, batch_size=batch_size):
            yield x


# ----------------------------------------------------------------------------------------------
# Domain metrics with the evaluation network

def evalnet_in(folder: Path) -> Path:
    """The evaluation network a `rdd train-evalnet` run left in `folder`: evalnet.pt, or an older run's classifier.pt."""
    old = folder / CLASSIFIER_FILE
    return old if old.is_file() and not (folder / EVALNET_FILE).is_file() else folder / EVALNET_FILE


def load_evalnet_checkpoint(path: str | Path) -> dict:
    """An evaluation network's checkpoint, checked to be one (a safe load: a file carrying code is refused)."""
    if not Path(path).is_file():
        raise RddError(f"evaluation network '{path}' not found; pass a checkpoint of `rdd train-evalnet` (e.g. assets/fmnist/evalnet.pt)")
    state = load_checkpoint(path)
    if state.get("arch") != "evalnet-cnn":
        what = f"a {state.get('arch')!r} classifier" if state.get("kind") == "classifier" else f"a {state.get('kind', 'plain')} checkpoint"
        raise RddError(f"'{path}' is {what}, not an evaluation network; pass one of `rdd train-evalnet` (e.g. assets/fmnist/evalnet.pt)")
    for key in ("in_channels", "resolution"):
        if not isinstance(state.get(key), int) or isinstance(state.get(key), bool) or state[key] < 1:
            raise RddError(f"evaluation network '{path}': field '{key}' is {state.get(key)!r}, not a positive integer; "
                           "use another copy or train one with rdd train-evalnet")
    return state


def load_evalnet(path: str | Path, data: DataConfig, device="cpu"):
    from rdd.classifier_nets import load_classifier

    state = load_evalnet_checkpoint(path)
    if (state["in_channels"], state["resolution"]) != (data.channels, data.resolution):
        raise RddError(f"evalnet '{path}' was trained on {state['in_channels']}x{state['resolution']}x{state['resolution']} images, "
                       f"the model makes {data.channels}x{data.resolution}x{data.resolution}; train an evalnet with the same data config")
    return load_classifier(path, device)


@torch.no_grad()
def evalnet_outputs(evalnet, images, batch_size: int = 500, progress: bool = True) -> tuple[np.ndarray, torch.Tensor]:
    """Penultimate features (float64 numpy) and logits of `images` (a tensor or a data set)."""
    device = next(evalnet.parameters()).device
    features, logits = [], []
    total = (len(images) + batch_size - 1) // batch_size
    for x in tqdm(_image_batches(images, batch_size), total=total, desc="evalnet features", disable=not progress, leave=False):
        out = evalnet(x.to(device))
        features.append(out.pooled.double().cpu())
        logits.append(out.logits.double().cpu())
    return torch.cat(features).numpy(), torch.cat(logits)


def _valid_statistics(mu: np.ndarray, sigma: np.ndarray, dim: int) -> bool:
    """A mean vector of the evaluation network's feature size and its covariance, of real finite numbers."""
    return (mu.shape == (dim,) and sigma.shape == (dim, dim) and mu.dtype.kind == "f"
            and sigma.dtype.kind == "f" and bool(np.isfinite(mu).all() and np.isfinite(sigma).all()))


def reference_statistics(evalnet_path: str | Path, data: DataConfig, cache: str | Path | None = None, device="cpu",
                         batch_size: int = 500, progress: bool = True, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the evalnet features of `split` (the test set, or 'val': held-out training images
    for choosing settings without touching the test set), cached to `cache` (default: named by its
    stamp in cache_dir(), so every evalnet and data config has its own file)."""
    key = reference_key(evalnet_path, data, split)
    cache = Path(cache) if cache else cache_dir() / "reference" / f"{split}-{key}.npz"
    evalnet = load_evalnet(evalnet_path, data, device)
    if cache.is_file():
        try:
            with np.load(cache) as f:
                stored = str(f["key"]), f["mu"], f["sigma"]
            if stored[0] != key:
                print(f"reference cache '{cache}' was made for another evalnet or data config; recomputing it")
            elif not _valid_statistics(*stored[1:], evalnet.num_features):
                print(f"reference cache '{cache}' holds statistics of the wrong shape or nan/inf; recomputing it")
            else:
                return stored[1], stored[2]
        except (OSError, ValueError, KeyError, EOFError):  # damaged, or not one of ours: it is only a cache
            print(f"reference cache '{cache}' is damaged or not an rdd reference cache; recomputing it")
    check_writable(cache, "the reference cache")  # found before the features are computed, not after
    features, _ = evalnet_outputs(evalnet, load_dataset(data, split), batch_size, progress)
    mu, sigma = feature_statistics(features)
    write_atomic(cache, lambda f: np.savez(f, key=key, mu=mu, sigma=sigma))  # a reader never sees half a file
    return mu, sigma


def domain_metrics(evalnet, images, reference_stats, batch_size: int = 500, progress: bool = True) -> dict:
    """FD to the reference statistics and IS of `images` ([-1, 1]) under the evaluation network."""
    features, logits = evalnet_outputs(evalnet, images, batch_size, progress)
    fd = frechet_distance(*feature_statistics(features), *reference_stats)
    is_mean, is_std = inception_score(logits)
    return {"fd": fd, "is": is_mean, "is_std": is_std}


# ----------------------------------------------------------------------------------------------
# Standard FID / IS / KID through torch-fidelity's Inception-v3

class Uint8Images(Dataset):
    """[-1, 1] images (a tensor, or a data set of (image, label)) as the uint8 3xHxW tensors torch-fidelity reads."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i] if isinstance(self.images, torch.Tensor) else self.images[i][0]
        return torch.from_numpy(to_uint8_nhwc(x[None])[0]).permute(2, 0, 1)


def check_inception_weights(path: str | Path) -> None:
    """One-line errors for a missing, unsafe or wrong weights file (torch-fidelity loads it with weights_only=False)."""
    state = load_checkpoint(path)
    fc = state.get("fc.weight")
    if fc is None or tuple(fc.shape) != (1008, 2048):
        raise RddError(f"'{path}' is not torch-fidelity's Inception-v3 state dict (no 1008x2048 fc.weight); "
                       f"pass {INCEPTION_FILE} from torch-fidelity's GitHub releases")


def inception_cache_name(weights: str | Path, data: DataConfig, limit: int | None = None) -> str:
    """torch-fidelity keys its cache by name only: the name carries the weights' and data's stamp."""
    return f"rdd-{data.dataset}{data.resolution}-{reference_key(weights, data)}" + (f"-first{limit}" if limit else "")


def write_random_inception(path: str | Path, seed: int = 0) -> Path:
    """torch-fidelity's Inception-v3 with its own random initialisation, saved as a weights file: a dry run
    exercises the FID/IS path without the real weights (its numbers measure nothing)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Untrained(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # keep the layers' own initialisation

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    empty = path.with_name(f".{path.name}.empty")
    torch.save({}, empty)  # the constructor reads a file (or downloads without one); this one is ignored
    torch.manual_seed(seed)
    network = Untrained("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(empty))
    empty.unlink()
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):  # He init keeps the activations' scale through the 94 convolutions
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    state = network.state_dict()
    torch.save(state, path)  # a plain state dict, as torch-fidelity reads its weights
    return path


INCEPTION_BATCH = 64  # Inception-v3 runs at 299x299: a smaller --batch-size lowers it, a larger one does not raise it


def inception_metrics(images, reference, weights: str | Path, cache_root: str | Path, cache_name: str,
                      batch_size: int = INCEPTION_BATCH, progress: bool = True) -> dict:
    """FID, IS and KID of `images` against `reference` (both [-1, 1]); the reference features are
    cached in `cache_root` under `cache_name` and reused by any later call with the same name."""
    import torch_fidelity

    check_inception_weights(weights)
    n = min(len(images), len(reference))
    out = torch_fidelity.calculate_metrics(
        input1=Uint8Images(images), input2=Uint8Images(reference), cuda=torch.cuda.is_available(),
        isc=True, fid=True, kid=True, kid_subset_size=min(1000, n), feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights), batch_size=batch_size, cache_root=str(cache_root),
        input2_cache_name=cache_name, save_cpu_ram=True, verbose=progress)  # save_cpu_ram: no loader workers
    return {"fid": out["frechet_inception_distance"], "isc": out["inception_score_mean"],
            "isc_std": out["inception_score_std"], "kid": out["kernel_inception_distance_mean"],
            "kid_std": out["kernel_inception_distance_std"]}


# ----------------------------------------------------------------------------------------------

def evaluate_checkpoint(ckpt: str | Path, steps: int | None = None, sampler: str = "ddim", num_samples: int | None = None,
                        seed: int = 0, batch_size: int | None = None, evalnet: str | None = None,
                        inception_weights: str | None = None, reference_cache: str | None = None,
                        device=None, progress: bool = True, reference_split: str = "test",
                        holdout: int | None = None, ctx: DistContext | None = None,
                        reference_limit: int | None = None, data_overrides: list[str] | None = None) -> dict | None:
    """Sample `num_samples` images from a checkpoint and measure them: domain FD/IS when an evalnet is
    given, Inception FID/IS/KID when Inception weights are. Unset arguments come from the checkpoint's
    `eval` config. `reference_cache` is the domain .npz; torch-fidelity's cache goes in the folder beside
    it (default: both in cache_dir()). Under torchrun (`ctx`) the processes share the sampling and the
    main one measures and returns the result; the others return None. `reference_limit`: FID against the
    first N training images only (a dry run). `data_overrides` (data.KEY=VALUE) change the data the samples are
    measured against; a diffusers folder names none, so it must name data.dataset."""
    from rdd.baselines import nfe
    from rdd.model_io import load_diffusion_model
    from rdd.sampling import check_sample_memory, generate, resolve_steps

    if num_samples is not None:
        check_sample_count(num_samples)
    if batch_size is not None and batch_size < 1:
        raise RddError(f"--batch-size {batch_size}: use at least 1")
    data_overrides = data_overrides or []
    if Path(ckpt).is_dir() and "data.dataset" not in command_line_keys(data_overrides):
        raise RddError(f"'{ckpt}' is a diffusers folder, which names no data set to measure its samples against; name it: "
                       "--set data.dataset=fashion_mnist (or cifar10, imagenet64, or folder with data.root=DIR)")
    device = device or default_device()
    model, cfg, meta = load_diffusion_model(ckpt, device)
    if data_overrides:
        cfg.data = with_data_overrides(cfg.data, data_overrides, "eval")
    ec = cfg.eval
    num_samples = ec.num_samples if num_samples is None else num_samples
    batch_size = ec.batch_size if batch_size is None else batch_size
    evalnet = evalnet or ec.evalnet
    inception_weights = inception_weights or ec.inception_weights
    reference_cache = reference_cache or ec.reference_cache
    if not evalnet and not inception_weights:
        evalnet = shipped_evalnet(cfg.data)
    if not evalnet and not inception_weights:
        raise RddError("nothing to measure: pass --evalnet (a checkpoint of `rdd train-evalnet`) and/or "
                       f"--inception-weights ({INCEPTION_FILE})")
    steps = resolve_steps(meta, steps, sampler)
    check_sample_memory(cfg, num_samples, batch_size)
    if holdout is not None:
        cfg.data.holdout = holdout
    # A missing or wrong network is refused before sampling, not after.
    net = load_evalnet(evalnet, cfg.data, device) if evalnet else None
    cache_root = Path(reference_cache).parent if reference_cache else cache_dir() / "fidelity"
    if inception_weights:
        check_inception_weights(inception_weights)
        check_writable(cache_root / "features", "torch-fidelity's cache")
    # The reference statistics first (the main process measures): an unwritable cache is found before the samples are drawn.
    measures = evalnet and (ctx is None or ctx.is_main)
    stats = reference_statistics(evalnet, cfg.data, reference_cache, device, batch_size, progress, reference_split) if measures else None

    start = time.perf_counter()
    images = generate(model, cfg, steps, num_samples, seed, batch_size, sampler, device, progress, ctx)
    if images is None:
        return None
    result = {"ckpt": str(ckpt), "evalnet": evalnet, "sampler": sampler, "steps": steps, "nfe": nfe(sampler, steps),
              "num_samples": num_samples, "seed": seed, "reference": reference_split,
              "sampling_seconds": time.perf_counter() - start}
    if evalnet:
        result.update(domain_metrics(net, images, stats, batch_size, progress))
    if inception_weights:
        reference = load_dataset(cfg.data, "train")
        if reference_limit:
            reference = Subset(reference, range(min(reference_limit, len(reference))))
        result.update(inception_metrics(images, reference, inception_weights, cache_root,
                                        inception_cache_name(inception_weights, cfg.data, reference_limit),
                                        min(batch_size, INCEPTION_BATCH), progress))
    check_finite_result(result, num_samples)
    return result


def shipped_evalnet(data: DataConfig) -> str | None:
    """The repository's evaluation network where the data is what it was trained on (Fashion-MNIST, 16x16 grey)."""
    path = ASSETS / EVALNET_FILE
    fits = (data.dataset, data.resolution, data.channels) == ("fashion_mnist", 16, 1)
    return str(path) if fits and path.is_file() else None


def run_label(ckpt: str | Path) -> str:
    """A result's name: the run folder of a model.pt, else the checkpoint's stem (a diffusers folder's name)."""
    path = Path(ckpt)
    return str(path.parent) if path.name == MODEL_FILE else (path.name if path.is_dir() else path.stem)


def format_result(r: dict) -> str:
    parts = [run_label(r["ckpt"]), f"{r['sampler']} {r['steps']} steps ({r['nfe']} NFE)",
             f"N={r['num_samples']}"]
    if "fd" in r:
        parts.append(f"FD {r['fd']:.3f}  IS {r['is']:.3f} ± {r['is_std']:.3f}")
    if "fid" in r:
        parts.append(f"FID {r['fid']:.3f}  IS {r['isc']:.3f} ± {r['isc_std']:.3f}  KID {r['kid']:.5f} ± {r['kid_std']:.5f}")
    parts.append(f"sampling {r['sampling_seconds']:.1f}s")
    return " | ".join(parts)
