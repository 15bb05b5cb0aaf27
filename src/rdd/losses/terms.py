"""The one table of loss terms, rdd.registry.TERMS: name -> LossTerm class, filled here with the
built-in terms. A method (rdd.registry.METHODS) lists term names."""
from __future__ import annotations

from rdd.errors import RddError
from rdd.losses.cfd import CFD
from rdd.losses.ii_p2p import II_P2P
from rdd.losses.is_p2p import IS_P2P
from rdd.losses.m_p2p import M_P2P
from rdd.losses.pd import PD
from rdd.losses.pd_lpips import PD_LPIPS
from rdd.losses.term import LossTerm
from rdd.registry import TERMS, check_term

TERMS.update({
    "pd": PD,  # eq. 2
    "lpips": PD_LPIPS,  # eq. 2 with LPIPS (§5)
    "cfd": CFD,  # eq. 4
    "ii_p2p": II_P2P,  # eq. 6
    "is_p2p": IS_P2P,  # eq. 7
    "m_p2p": M_P2P,  # eq. 8-9
})


def register_term(name: str, term: type[LossTerm]) -> type[LossTerm]:
    """Add a loss term under `name`, for methods to list (docs/extending.md)."""
    if name in TERMS and TERMS[name] is not term:
        raise RddError(f"loss term '{name}' is already registered ({TERMS[name].__name__})")
    TERMS[name] = term
    return term


def term_class(name: str) -> type[LossTerm]:
    check_term(name)
    return TERMS[name]
