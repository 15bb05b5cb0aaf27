"""rdd: distil many-step diffusion models into 1-, 2- or 4-step generators (PD, RCFD, RDD).

The public Python API, for a training loop of your own (README: "Use the losses in your own
training loop"): the losses live in rdd.losses; the names below are its entry points. They are
imported on first use, so that `import rdd` (and `rdd --help`) stays free of torch.
"""

__version__ = "0.1.0"

_PUBLIC = {
    "MethodLoss": "rdd.losses",  # a method's weighted loss terms, called on (x_hat_S, x~)
    "DistillBatch": "rdd.losses",  # what a single term reads
    "LossTerm": "rdd.losses",  # the base class of a term (docs/extending.md)
    "register_term": "rdd.losses",
    "register_method": "rdd.registry",
    "METHODS": "rdd.registry",
    "DistillConfig": "rdd.config",  # the settings MethodLoss.from_config reads
    "ClassifierOutput": "rdd.classifier_nets",  # what a classifier returns: feature map, pooled vector, logits
    "load_classifier": "rdd.classifier_nets",
    "load_diffusion_model": "rdd.model_io",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'rdd' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_PUBLIC[name]), name)
