"""The one YAML and JSON reader for everything rdd reads: configs, `--set` values, run records.

YAML is read as YAML 1.2's core schema, strictly: `010` is ten (1.1 made it eight), `1e-3` is a number,
`yes`/`on` stay words, dates stay strings. A duplicate key (a section written twice included) is
refused instead of silently dropping the first; so are tags (`!!python/...`, `!!binary`), anchors and
aliases (a few lines of aliases expand to billions of nodes), documents nested deeper than
MAX_DEPTH and files larger than MAX_BYTES. JSON objects with a key twice are refused too.
"""
from __future__ import annotations

import json
import re

import yaml

from rdd.errors import RddError

MAX_BYTES = 1 << 20  # a config is a few KB; a megabyte is no config
MAX_DEPTH = 16
STR_TAG = "tag:yaml.org,2002:str"


class StrictYamlError(RddError):
    """A YAML or JSON text rdd refuses; the message names where."""


def _int_1_2(text: str) -> int:
    sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
    if digits.startswith(("0o", "0x")):
        return sign * int(digits[2:], 8 if digits[1] == "o" else 16)
    return sign * int(digits, 10)


def _float_1_2(text: str) -> float:
    lowered = text.lower().lstrip("+")
    if lowered in (".inf", "-.inf"):
        return float(lowered.replace(".", ""))
    return float("nan") if lowered == ".nan" else float(text)


# YAML 1.2 core schema: (tag, pattern, first characters, constructor)
CORE_SCALARS = [
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", "~nN", lambda s: None),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF", lambda s: s.lower() == "true"),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789", _int_1_2),
    ("tag:yaml.org,2002:float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
     r"|\.(?:nan|NaN|NAN))$", "-+.0123456789", _float_1_2),
]


class StrictLoader(yaml.SafeLoader):
    """SafeLoader with the 1.2 core schema, and no duplicate keys, tags, aliases or deep nesting."""

    yaml_implicit_resolvers: dict = {}
    depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.MarkedYAMLError(None, None, "anchors and aliases are not accepted; write the values out",
                                       event.start_mark)
        tag = getattr(event, "tag", None)
        if tag not in (None, "!"):
            raise yaml.MarkedYAMLError(None, None, f"tags ({tag}) are not accepted; write a plain value", event.start_mark)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise yaml.MarkedYAMLError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int)) or isinstance(key, bool):  # names, or counts (a table's step counts)
                raise yaml.MarkedYAMLError(None, None, f"key {key!r} is not a name", key_node.start_mark)
            if key in seen:
                raise yaml.MarkedYAMLError(None, None, f"key '{key}' appears twice (the first would be lost); keep one",
                                           key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


for _tag, _pattern, _first, _make in CORE_SCALARS:
    StrictLoader.add_implicit_resolver(_tag, re.compile(_pattern), list(_first))
    StrictLoader.add_constructor(_tag, lambda loader, node, make=_make: make(loader.construct_scalar(node)))
StrictLoader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^$"), [""])


def _where(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    return f"line {mark.line + 1}: {' '.join(str(problem).split())}" if mark else " ".join(str(error).split())


def parse_yaml(text: str, source: str):
    """The YAML in `text` (from `source`, named in the error) as plain Python values, read strictly."""
    if len(text.encode(errors="replace")) > MAX_BYTES:
        raise StrictYamlError(f"{source} is larger than {MAX_BYTES // 1024} KiB; a config is a few KB")
    try:
        return yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as e:
        raise StrictYamlError(f"{source} is not valid YAML for rdd: {_where(e)}") from None
    except (RecursionError, ValueError, OverflowError) as e:
        raise StrictYamlError(f"{source} is not valid YAML for rdd ({type(e).__name__}: {e})") from None


def _unique_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"key '{twice[0]}' appears twice")
    return dict(pairs)


def parse_json(text: str, source: str):
    """The JSON in `text`, with duplicate keys refused and NaN literals allowed only as Python writes them."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as e:
        raise StrictYamlError(f"{source} is not valid JSON ({' '.join(str(e).split())})") from None
