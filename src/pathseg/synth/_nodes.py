"""Typed access to YAML nodes with error messages that name the script, line and key path."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any, NoReturn

import yaml
from yaml.constructor import SafeConstructor

from pathseg.errors import InputError

__all__ = ["Node", "compose"]


def compose(text: str, script: str) -> Node:
    """Parse YAML text into a root Node (InputError with the line on syntax errors)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        raise InputError(f"{script}: {line}YAML syntax error: {problem}") from exc
    except yaml.YAMLError as exc:
        raise InputError(f"{script}: YAML syntax error: {' '.join(str(exc).split())}") from exc
    if root is None:
        raise InputError(f"{script}: empty scene script")
    return Node(script, root, "")


class Node:
    """One YAML node plus its key path; every accessor validates and fails with the node's line."""

    def __init__(self, script: str, node: yaml.Node, path: str) -> None:
        self.script, self.node, self.path = script, node, path

    @property
    def line(self) -> int:
        """1-based line number of the node."""
        return self.node.start_mark.line + 1

    def fail(self, message: str) -> NoReturn:
        """Raise InputError '<script>: line N: <path>: <message>'."""
        where = f"{self.path}: " if self.path else ""
        raise InputError(f"{self.script}: line {self.line}: {where}{message}")

    def child(self, node: yaml.Node, key: str | int) -> Node:
        """Sub-node with the path extended by a key or list index."""
        if isinstance(key, int):
            path = f"{self.path}[{key}]"
        else:
            path = f"{self.path}.{key}" if self.path else key
        return Node(self.script, node, path)

    def mapping(self, allowed: Iterable[str], required: Iterable[str] = ()) -> dict[str, Node]:
        """Mapping of key -> Node; unknown or duplicate keys fail with a suggestion."""
        if not isinstance(self.node, yaml.MappingNode):
            self.fail(f"expected a mapping (key: value), got {self._kind()}")
        allowed = list(allowed)
        out: dict[str, Node] = {}
        for key_node, value_node in self.node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            at = Node(self.script, key_node, self.path)
            if not isinstance(key, str) or key_node.tag != "tag:yaml.org,2002:str":
                at.fail(f"keys must be plain words, got {key!r}")
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(allowed)})"
                at.fail(f"unknown key '{key}'{hint}")
            if key in out:
                at.fail(f"key '{key}' given twice")
            out[key] = self.child(value_node, key)
        missing = [k for k in required if k not in out]
        if missing:
            self.fail(f"missing required key '{missing[0]}'")
        return out

    def seq(self, min_len: int = 0) -> list[Node]:
        """List of sub-nodes."""
        if not isinstance(self.node, yaml.SequenceNode):
            self.fail(f"expected a list, got {self._kind()}")
        if len(self.node.value) < min_len:
            self.fail(f"expected at least {min_len} item(s), got {len(self.node.value)}")
        return [self.child(n, i) for i, n in enumerate(self.node.value)]

    def value(self) -> Any:
        """The plain Python value of the node (scalars, lists, mappings)."""
        try:
            return SafeConstructor().construct_object(self.node, deep=True)
        except yaml.YAMLError as exc:
            self.fail(f"invalid value ({' '.join(str(exc).split())})")

    def string(self, choices: Iterable[str] | None = None) -> str:
        """A string, optionally one of `choices`."""
        v = self.value() if isinstance(self.node, yaml.ScalarNode) else None
        if not isinstance(v, str) or not v:
            self.fail(f"expected a text value, got {self._shown()}")
        if choices is not None:
            choices = list(choices)
            if v not in choices:
                self.fail(f"unknown value '{v}' (choose from {', '.join(choices)})")
        return v

    def boolean(self) -> bool:
        """true / false."""
        v = self.value() if isinstance(self.node, yaml.ScalarNode) else None
        if not isinstance(v, bool):
            self.fail(f"expected true or false, got {self._shown()}")
        return v

    def number(self, lo: float | None = None, hi: float | None = None, integer: bool = False,
               lo_open: bool = False) -> float:
        """A number in [lo, hi] (lo excluded when lo_open); integers only when `integer`."""
        v = self.value() if isinstance(self.node, yaml.ScalarNode) else None
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or (isinstance(v, float) and not math.isfinite(v)):  # bool is an int
            self.fail(f"expected {'an integer' if integer else 'a number'}, got {self._shown()}")
        if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v > hi):
            low = f"> {lo:g}" if lo_open else f">= {lo:g}"
            bounds = " and ".join(b for b in (low if lo is not None else "", f"<= {hi:g}" if hi is not None else "") if b)
            self.fail(f"value {v} out of range (must be {bounds})")
        return int(v) if integer else float(v)

    def interval(self, lo: float | None = None, hi: float | None = None, integer: bool = False,
                 lo_open: bool = False) -> tuple[float, float]:
        """A number x (-> (x, x)) or a [low, high] pair with low <= high."""
        if isinstance(self.node, yaml.ScalarNode):
            x = self.number(lo, hi, integer, lo_open)
            return (x, x)
        items = self.seq()
        if len(items) != 2:
            self.fail(f"expected a number or a [low, high] pair, got a list of {len(items)}")
        a, b = (n.number(lo, hi, integer, lo_open) for n in items)
        if a > b:
            self.fail(f"low {a:g} is greater than high {b:g}")
        return (a, b)

    def vector(self, n: int, lo: float | None = None, hi: float | None = None) -> list[float]:
        """A list of exactly n numbers."""
        items = self.seq()
        if len(items) != n:
            self.fail(f"expected a list of {n} numbers, got {len(items)}")
        return [item.number(lo, hi) for item in items]

    def _kind(self) -> str:
        if isinstance(self.node, yaml.MappingNode):
            return "a mapping"
        return "a list" if isinstance(self.node, yaml.SequenceNode) else self._shown()

    def _shown(self) -> str:
        if isinstance(self.node, yaml.ScalarNode):
            return repr(self.node.value) if self.node.value != "" else "nothing"
        return self._kind()
