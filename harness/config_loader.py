"""Strict YAML → frozen-dataclass machinery shared by every config the harness reads.

* `load_document` reads a file with `yaml.safe_load` semantics and remembers, from the node tree
  that `yaml.SafeLoader` composes, the line on which every key and list item starts, so an error
  can say `experiments/x.yaml:12: ...`. Duplicate keys (which `safe_load` silently collapses) are
  an error.
* `Document` carries the data plus where every value came from: a line of the file, a `--set`
  override, or a smoke override. `--set`-style overrides (`train.steps=400`, values parsed as YAML
  scalars) are applied with `Document.apply_override`.
* `build_dataclass` builds a frozen dataclass from a mapping strictly: an unknown key names the
  closest valid one, a wrong type says what was expected, and a `ValueError` from the class's
  `__post_init__` becomes a `UserError` naming the file and key.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError, closest

Keys = tuple  # a path into the document: ("models", "vdvae", "sweep", "grid", "effective_depth")


def dotted(keys: Keys) -> str:
    return ".".join(str(k) for k in keys)


def split_dotted(key: str) -> Keys:
    parts = tuple(part for part in key.split("."))
    if not key or any(not part for part in parts):
        raise UserError(f"malformed key '{key}': expected dotted names like 'train.steps'")
    return tuple(int(p) if p.isdigit() else p for p in parts)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """" — did you mean 'x'?" or ". Valid keys: a, b" when nothing is close."""
    choices = sorted(set(choices))
    hint = closest(name, choices)
    if hint is not None:
        return f" — did you mean '{hint}'?"
    return f". Valid keys: {', '.join(choices)}" if choices else ""


def describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({type(value).__name__})"


# --------------------------------------------------------------------------- reading YAML


def _line_index(node: yaml.Node, keys: Keys, lines: dict, source: str) -> None:
    """Record the 1-based start line of every key/item under `node`; refuse duplicate keys."""
    lines.setdefault(keys, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise UserError(f"{source}:{key_node.start_mark.line + 1}: keys must be plain names")
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key == "<<":
                raise UserError(f"{source}:{line}: YAML merge keys ('<<') are not supported; "
                                "write the keys out")
            if key in seen:
                raise UserError(f"{source}:{line}: duplicate key '{dotted(keys + (key,))}' "
                                f"(first given on line {seen[key]})")
            seen[key] = line
            lines[keys + (key,)] = line
            _line_index(value_node, keys + (key,), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_index(item, keys + (index,), lines, source)


def load_document(path: Path) -> "Document":
    """Parse `path` (safe_load semantics) into a `Document` that knows every key's line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"experiment file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    source = str(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(error, "problem", None) or str(error)
        raise UserError(f"{where}: not valid YAML: {problem}") from None
    lines: dict[Keys, int] = {}
    if node is not None:
        _line_index(node, (), lines, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{source}:1: an experiment file must be a mapping of sections, "
                        f"got {type(data).__name__}")
    return Document(data=data, source=source, lines=lines)


# --------------------------------------------------------------------------- documents


@dataclasses.dataclass
class Document:
    """Parsed YAML data plus the origin of every value (file line or override)."""

    data: dict
    source: str
    lines: dict = dataclasses.field(default_factory=dict)
    # keys set by overrides -> "--set train.steps=400" (or the smoke override's origin)
    overridden: dict = dataclasses.field(default_factory=dict)

    def where(self, keys: Keys) -> str:
        """`file:line`, or the override that set this key (or one of its parents)."""
        for n in range(len(keys), -1, -1):
            prefix = tuple(keys[:n])
            if prefix in self.overridden:
                return self.overridden[prefix]
            if prefix in self.lines:
                return f"{self.source}:{self.lines[prefix]}"
        return self.source

    def get(self, keys: Keys, default: Any = None) -> Any:
        node: Any = self.data
        for key in keys:
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
                node = node[key]
            else:
                return default
        return node

    def apply_override(self, keys: Keys, value: Any, origin: str,
                       closed: Mapping[Keys, Iterable[str]] | None = None) -> None:
        """Set `keys` to `value`, creating missing mappings on the way.

        `closed` maps a path whose keys are user-chosen names (e.g. ("models",)) to those names,
        so that a typo there is reported instead of silently creating a new entry.
        """
        node: Any = self.data
        for depth, key in enumerate(keys[:-1]):
            here = tuple(keys[:depth])
            if isinstance(node, list):
                if not isinstance(key, int) or not 0 <= key < len(node):
                    raise UserError(f"{origin}: '{dotted(here)}' is a list of {len(node)} items; "
                                    f"'{key}' is not an index into it")
                node = node[key]
                continue
            if not isinstance(node, dict):
                raise UserError(f"{origin}: '{dotted(here)}' is a {type(node).__name__}, "
                                f"not a section; cannot set '{dotted(keys)}'")
            if key not in node:
                if closed is not None and here in closed:
                    names = list(closed[here])
                    hint = closest(str(key), names)
                    raise UserError(f"{origin}: unknown key '{dotted(here + (key,))}'"
                                    + (f" — did you mean '{dotted(here + (hint,))}'?" if hint
                                       else f". Valid: {', '.join(sorted(names))}"))
                node[key] = {}
            node = node[key]
        last = keys[-1]
        if isinstance(node, list):
            if not isinstance(last, int) or not 0 <= last < len(node):
                raise UserError(f"{origin}: '{last}' is not an index into "
                                f"'{dotted(keys[:-1])}' (a list of {len(node)} items)")
        elif not isinstance(node, dict):
            raise UserError(f"{origin}: '{dotted(keys[:-1])}' is a {type(node).__name__}, "
                            f"not a section; cannot set '{dotted(keys)}'")
        node[last] = copy.deepcopy(value)
        # Children of the overridden key now come from the override too.
        for known in [k for k in self.overridden if k[:len(keys)] == keys]:
            del self.overridden[known]
        self.overridden[tuple(keys)] = origin


def parse_override(text: str) -> tuple[Keys, Any]:
    """`"train.steps=400"` → (("train", "steps"), 400); the value is parsed as a YAML scalar."""
    if "=" not in text:
        raise UserError(f"--set {text}: expected KEY=VALUE, e.g. --set train.steps=400")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise UserError(f"--set {text}: the value is not a valid YAML scalar") from None
    return split_dotted(key), value


# --------------------------------------------------------------------------- typed building


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if tp is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arm) for arm in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (tuple, list) or tp in (tuple, list):
        args = typing.get_args(tp)
        if not args:
            return "a list"
        return f"a list, each item {_type_name(args[0])}"
    if origin is dict or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


_YAML11_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


class _Mismatch(Exception):
    pass


def coerce(value: Any, tp: Any, doc: Document, keys: Keys) -> Any:
    """Check `value` against the annotation `tp`; return it converted (list → tuple, int → float).

    Raises a `UserError` naming where the value came from.
    """
    try:
        return _coerce(value, tp, doc, keys)
    except _Mismatch:
        raise UserError(f"{doc.where(keys)}: '{dotted(keys)}' must be {_type_name(tp)}, "
                        f"got {describe(value)}") from None


def _coerce(value: Any, tp: Any, doc: Document, keys: Keys) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch
        for arm in args:
            if arm is type(None):
                continue
            try:
                return _coerce(value, arm, doc, keys)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)  # 1e6 is a float in YAML; accept it where an integer is meant
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _YAML11_FLOAT.match(value.strip()):
            return float(value)  # YAML 1.1 reads `1e-3` and `2.0e9` (no sign) as strings
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if not args:
            items = list(value)
        elif origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _Mismatch
            items = [coerce(v, a, doc, keys + (i,)) for i, (v, a) in enumerate(zip(value, args))]
        else:
            items = [coerce(v, args[0], doc, keys + (i,)) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        if len(args) == 2:
            return {coerce(k, args[0], doc, keys): coerce(v, args[1], doc, keys + (k,))
                    for k, v in value.items()}
        return dict(value)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _Mismatch
        return build_dataclass(tp, value, doc, keys)
    return value  # an annotation we do not check (e.g. a callable): accept as given


def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass's fields (handles `from __future__ import annotations`)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be resolved: check nothing for it
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def required_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init
            and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def check_keys(mapping: Mapping, valid: Iterable[str], doc: Document, keys: Keys) -> None:
    """Unknown key → `file:line: unknown key 'a.b' — did you mean 'a.c'?`."""
    valid = list(valid)
    for key in mapping:
        if key not in valid:
            hint = closest(str(key), valid)
            if hint is not None:
                suggestion = f" — did you mean '{dotted(keys + (hint,))}'?"
            else:
                suggestion = f". Valid keys in '{dotted(keys) or 'the file'}': {', '.join(sorted(valid))}"
            raise UserError(f"{doc.where(keys + (key,))}: unknown key '{dotted(keys + (key,))}'"
                            f"{suggestion}")


def build_dataclass(cls: type, mapping: Any, doc: Document, keys: Keys, **extra: Any) -> Any:
    """Strictly build the frozen dataclass `cls` from the mapping found at `keys` in `doc`.

    `extra` supplies fields that do not come from the file (e.g. a name taken from a mapping key).
    """
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise UserError(f"{doc.where(keys)}: '{dotted(keys)}' must be a mapping of "
                        f"{cls.__name__} fields, got {describe(mapping)}")
    types_ = field_types(cls)
    settable = [name for name in types_ if name not in extra]
    check_keys(mapping, settable, doc, keys)
    missing = [name for name in required_fields(cls) if name not in mapping and name not in extra]
    if missing:
        raise UserError(f"{doc.where(keys)}: '{dotted(keys) or 'the file'}' is missing required "
                        f"key '{dotted(keys + (missing[0],))}'")
    kwargs = {name: coerce(value, types_[name], doc, keys + (name,))
              for name, value in mapping.items()}
    kwargs.update(extra)
    return construct(cls, kwargs, doc, keys, list(mapping))


_FIELD_PREFIX = re.compile(r"^\s*(?:[A-Za-z_]\w*\.)?([A-Za-z_]\w*)\s*(?:=|:)")


def construct(cls: type, kwargs: dict, doc: Document, keys: Keys,
              named: Iterable[str] | Mapping[str, Keys] = ()) -> Any:
    """`cls(**kwargs)`, with a `ValueError`/`TypeError` from `__post_init__` as a `UserError`.

    A message that starts with a field name (`zdim: ...`, `train.lr = ...`,
    `Config.channels=...`) is attributed to where that field was set: `named` maps field names
    to their key paths (or lists fields set directly under `keys`); otherwise to `keys`.
    """
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as error:
        message = str(error)
        paths = dict(named) if isinstance(named, Mapping) else {n: keys + (n,) for n in named}
        where_keys = keys
        match = _FIELD_PREFIX.match(message)
        if match and match.group(1) in paths:
            where_keys = tuple(paths[match.group(1)])
        raise UserError(f"{doc.where(where_keys)}: invalid '{dotted(where_keys) or cls.__name__}': "
                        f"{message}") from None


def to_plain(obj: Any) -> Any:
    """Dataclasses/tuples/paths → JSON- and YAML-friendly dicts, lists and scalars."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
