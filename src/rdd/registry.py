"""Names the command line and the configs choose from, kept free of heavy imports so that
`rdd --help` starts fast: the methods, the samplers, and the table of loss terms, which
rdd.losses.terms fills with its classes when it is imported (the classes need torch)."""
import dataclasses

from rdd.config import DistillConfig
from rdd.errors import RddError

# method -> [(loss term, weight key)]: a term is a name of TERMS; a weight key names a float
# DistillConfig field, None is weight 1.
METHODS: dict[str, list[tuple[str, str | None]]] = {
    "pd": [("pd", None)],  # eq. 2
    "pd_lpips": [("lpips", None)],  # eq. 2 with LPIPS (§5)
    "rcfd": [("cfd", None)],  # eq. 4
    "cfd_ii": [("cfd", None), ("ii_p2p", "alpha")],  # Table 3's ablation rows
    "cfd_is": [("cfd", None), ("is_p2p", "alpha")],
    "cfd_m": [("cfd", None), ("m_p2p", "beta")],
    "rdd": [("cfd", None), ("is_p2p", "alpha"), ("m_p2p", "beta")],  # eq. 10
}

# loss term name -> its rdd.losses.LossTerm class: filled by rdd.losses.terms (rdd.losses.TERMS is this dict).
TERMS: dict[str, type] = {}

SAMPLERS = ("ddim", "dpm-solver", "pndm")

WEIGHT_KEYS = tuple(f.name for f in dataclasses.fields(DistillConfig) if f.type == "float")


def check_term(name: str) -> None:
    if name not in TERMS:
        known = ", ".join(TERMS) or "none (import rdd.losses first)"
        raise RddError(f"unknown loss term '{name}'; registered terms: {known}")


def check_weight_key(method: str, term: str, key) -> None:
    if key is not None and key not in WEIGHT_KEYS:
        raise RddError(f"method '{method}': the weight key {key!r} of term '{term}' is no distill setting; "
                       f"use one of {', '.join(WEIGHT_KEYS)}, or None for weight 1")


def register_method(name: str, terms: list[tuple[str, str | None]]) -> None:
    """Add a method: its loss terms with their weight keys (docs/extending.md). Unknown terms and weight keys are refused here."""
    if name in METHODS and METHODS[name] != terms:
        raise RddError(f"method '{name}' is already registered as {METHODS[name]}")
    for term, key in terms:
        check_term(term)
        check_weight_key(name, term, key)
    METHODS[name] = list(terms)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise RddError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
