"""Mutations of experiment files for the loader fuzz test: each takes the parsed document (or its
text) and a hypothesis `data` object and returns new YAML text plus what it changed."""

from __future__ import annotations

import copy
import math

import yaml
from hypothesis import strategies as st

ODD_VALUES = [None, True, False, 0, -1, -10**30, 10**30, 1e308, -1e308, math.nan, math.inf,
              -math.inf, 0.5, -0.5, "", "ünïcødé ☃", "\u202e\u0000x", "1e3", "null", [], {},
              [1, "a", None], {"a": {"b": [1]}}, "../../etc", "/abs/path"]


def paths(node, prefix=()):
    """Every key path (mappings and list items) under `node`."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append(prefix + (key,))
            out += paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out.append(prefix + (index,))
            out += paths(value, prefix + (index,))
    return out


def _parent(doc, path):
    node = doc
    for key in path[:-1]:
        node = node[key]
    return node


def mutate_tree(doc: dict, data) -> tuple[dict, str]:
    doc = copy.deepcopy(doc)
    every = paths(doc)
    path = data.draw(st.sampled_from(every))
    parent, last = _parent(doc, path), path[-1]
    kind = data.draw(st.sampled_from(["drop", "rename", "retype", "nest", "move", "odd"]))
    if kind == "drop":
        if isinstance(parent, list):
            parent.pop(last)
        else:
            del parent[last]
    elif kind == "rename" and isinstance(parent, dict):
        new = data.draw(st.sampled_from([f"{last}s", str(last)[:-1] or "x", f"{last}_x",
                                         str(last).upper(), "ключ", "", "a.b", "0"]))
        if new not in parent:
            parent[new] = parent.pop(last)
    elif kind == "retype":
        value = parent[last]
        parent[last] = ([value] if not isinstance(value, list) else
                        (value[0] if value else "x")) if data.draw(st.booleans()) else str(value)
    elif kind == "nest":
        parent[last] = {"value": parent[last]}
    elif kind == "move":
        # the same key and value one section away (wrong nesting)
        value = parent.pop(last) if isinstance(parent, dict) else parent[last]
        target = data.draw(st.sampled_from([p for p in every if isinstance(_get(doc, p), dict)]
                                           or [()])) if every else ()
        holder = _get(doc, target)
        if isinstance(holder, dict):
            holder[f"{last}"] = value
    else:
        parent[last] = data.draw(st.one_of(st.sampled_from(ODD_VALUES),
                                           st.integers(min_value=-2**70, max_value=2**70),
                                           st.floats(), st.text(max_size=8)))
    return doc, f"{kind} {'.'.join(map(str, path))}"


def _get(doc, path):
    node = doc
    for key in path:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def mutate_text(text: str, data) -> tuple[str, str]:
    lines = text.splitlines(keepends=True)
    index = data.draw(st.integers(min_value=0, max_value=len(lines) - 1))
    kind = data.draw(st.sampled_from(["duplicate", "break", "truncate", "tab", "bytes"]))
    if kind == "duplicate":  # a duplicated line: a duplicate key (or list item)
        lines.insert(index, lines[index])
    elif kind == "break":
        junk = data.draw(st.sampled_from([": : :", "[unclosed", "{a: 1", "- - x: [", "'open",
                                          "&anchor *alias", "!!python/object:os.system x",
                                          "<<: *x", "? complex\n: key"]))
        lines.insert(index, junk + "\n")
    elif kind == "truncate":
        cut = data.draw(st.integers(min_value=0, max_value=len(text)))
        return text[:cut], f"truncate at {cut}"
    elif kind == "tab":
        lines[index] = "\t" + lines[index]
    else:
        return text.encode("utf-8")[:index].decode("utf-8", "ignore") + "\udcff", "bytes"
    return "".join(lines), f"{kind} line {index + 1}"


def dump(doc) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
