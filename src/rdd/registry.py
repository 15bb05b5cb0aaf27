"""Names the command line and the configs choose from, kept free of heavy imports so that
`rdd --help` starts fast. The classes behind them live in rdd.losses (TERMS) and rdd.baselines."""
from rdd.errors import RddError

# method -> [(loss term, weight key)]: a term is a name of rdd.losses.TERMS; a weight key names a
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

SAMPLERS = ("ddim", "dpm-solver", "pndm")


def register_method(name: str, terms: list[tuple[str, str | None]]) -> None:
    """Add a method: its loss terms with their weight keys (docs/extending.md)."""
    if name in METHODS and METHODS[name] != terms:
        raise RddError(f"method '{name}' is already registered as {METHODS[name]}")
    METHODS[name] = list(terms)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise RddError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
