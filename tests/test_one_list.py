"""One list: the README's method and term tables, rdd.registry.METHODS, rdd.losses.TERMS, rdd.losses'
exports and the configs name the same methods and terms, so a change to one that misses another fails here."""
import re

import pytest

import rdd.losses
from helpers import ROOT
from rdd.config import DistillConfig, read_yaml_config
from rdd.errors import RddError
from rdd.registry import METHODS, TERMS, WEIGHT_KEYS, register_method

GREEK = {"α": "alpha", "β": "beta"}  # the README writes the paper's weight symbols


def readme_table(header: str) -> list[list[str]]:
    """The rows of the README table whose header row starts with `header`, as cells without backticks."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().replace("`", "") for cell in line.strip("|").split("|")])
    return rows


def test_the_readme_method_table_is_the_registry():
    table = {}
    for method, _, terms in readme_table("| method | loss (paper) |"):
        pairs = [re.fullmatch(r"(\w+)(?: × (\S+))?", cell.strip()).groups() for cell in terms.split(",")]
        table[method] = [(term, GREEK[weight] if weight else None) for term, weight in pairs]
    assert table == METHODS


def test_the_readme_term_table_is_the_term_table():
    table = {name: (cls, reads == "yes") for name, cls, _, reads in readme_table("| term | class")}
    assert table == {name: (term.__name__, term.needs_classifier) for name, term in TERMS.items()}


def test_rdd_losses_exports_and_names_every_term():
    assert TERMS is rdd.losses.TERMS
    for term in TERMS.values():
        assert term.__name__ in rdd.losses.__all__ and getattr(rdd.losses, term.__name__) is term
        assert term.__name__ in rdd.losses.__doc__, f"rdd.losses' docstring does not list {term.__name__}"


def test_every_weight_and_temperature_key_is_a_distill_setting():
    for method, terms in METHODS.items():
        for term, key in terms:
            assert term in TERMS and (key is None or key in WEIGHT_KEYS), (method, term, key)
    for term in TERMS.values():
        key = term.temperature_key
        assert key is None or key.removeprefix("distill.") in DistillConfig.__dataclass_fields__, key


def test_every_method_a_shipped_config_names_is_registered():
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        data = read_yaml_config(path)
        named = [data.get("distill", {}).get("method")] + data.get("chain_methods", []) + data.get("ablation_methods", [])
        assert set(filter(None, named)) <= set(METHODS), path


def test_register_method_refuses_an_unknown_term_or_weight_key_at_once():
    with pytest.raises(RddError, match="unknown loss term 'cfd2'"):
        register_method("bad", [("cfd2", None)])
    with pytest.raises(RddError, match=r"weight key 'alhpa' of term 'is_p2p' is no distill setting; use one of .*alpha"):
        register_method("bad", [("cfd", None), ("is_p2p", "alhpa")])
    assert "bad" not in METHODS
