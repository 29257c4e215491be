"""Strict YAML → frozen-dataclass machinery shared by every config the harness reads.

* `load_document` reads a file with `yaml.safe_load` semantics and remembers, from the node tree
  that `yaml.SafeLoader` composes, the line on which every key and list item starts, so an error
  can say `experiments/x.yaml:12: ...`. Duplicate keys (which `safe_load` silently collapses) are
  an error.
* `Document` carries the data plus where every value came from: a line of the file, a `--set`
  override, or a smoke override. `--set`-style overrides (`train.max_steps=400`, values parsed
  as YAML scalars) are applied with `Document.apply_override`.
* `build_dataclass` builds a frozen dataclass from a mapping strictly: an unknown key names the
  closest valid one, a wrong type says what was expected, and a `ValueError` from the class's
  `__post_init__` becomes a `UserError` naming the file and key.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from harness.checks import Mismatch, convert, describe, field_types
from harness.errors import UserError, closest

Keys = tuple  # a path into the document: ("models", "vdvae", "sweep", "grid", "effective_depth")


def dotted(keys: Keys) -> str:
    return ".".join(str(k) for k in keys)


def split_dotted(key: str) -> Keys:
    parts = tuple(part for part in key.split("."))
    if not key or any(not part for part in parts):
        raise UserError(f"malformed key '{key}': expected dotted names like 'train.max_steps'")
    return tuple(int(p) if p.isdigit() else p for p in parts)


# --------------------------------------------------------------------------- reading YAML


def _line_index(node: yaml.Node, keys: Keys, lines: dict, source: str) -> None:
    """Record the 1-based start line of every key/item under `node`; refuse duplicate keys."""
    lines.setdefault(keys, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise UserError(f"{source}:{key_node.start_mark.line + 1}: keys must be plain "
                                "names")
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
    # keys set by overrides -> "--set train.max_steps=400" (or the smoke override's origin)
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

    def mapping(self, keys: Keys, what: str) -> dict | None:
        """The mapping at `keys` (None when absent or null); any other node is a `UserError`
        (`what` says what the mapping holds): read a section's type before its keys."""
        value = self.get(keys)
        if value is None or isinstance(value, dict):
            return value
        raise UserError(f"{self.where(keys)}: '{dotted(keys)}' must be a mapping of {what}, "
                        f"got {describe(value)}")

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
                raise self._not_a_section(origin, here, node, keys)
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
            raise self._not_a_section(origin, keys[:-1], node, keys)
        node[last] = copy.deepcopy(value)
        # Children of the overridden key now come from the override too.
        for known in [k for k in self.overridden if k[:len(keys)] == keys]:
            del self.overridden[known]
        self.overridden[tuple(keys)] = origin

    def _not_a_section(self, origin: str, here: Keys, node: Any, keys: Keys) -> UserError:
        return UserError(f"{origin}: cannot set '{dotted(keys)}': '{dotted(here)}' "
                         f"({self.where(here)}) is {describe(node)}, not a section")


def parse_override(text: str) -> tuple[Keys, Any]:
    """`"train.max_steps=400"` → (("train", "max_steps"), 400); the value is parsed as a YAML
    scalar."""
    if "=" not in text:
        raise UserError(f"--set {text}: expected KEY=VALUE, e.g. --set train.max_steps=400")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise UserError(f"--set {text}: the value is not a valid YAML scalar") from None
    return split_dotted(key), value


# --------------------------------------------------------------------------- typed building


def coerce(value: Any, tp: Any, doc: Document, keys: Keys) -> Any:
    """Check `value` against the annotation `tp` (harness.checks: type, range, allowed values);
    return it converted (list → tuple, int → float). A `UserError` names where it came from."""
    def build(cls: type, mapping: dict, suffix: tuple) -> Any:
        return build_dataclass(cls, mapping, doc, keys + suffix)

    try:
        return convert(value, tp, build)
    except Mismatch as error:
        where = keys + error.suffix
        raise UserError(f"{doc.where(where)}: '{dotted(where)}' {error}") from None


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
                suggestion = (f". Valid keys in '{dotted(keys) or 'the file'}': "
                              f"{', '.join(sorted(valid))}")
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


# A message that starts with a field name: `zdim: must be ...`, `max_steps must be ...`,
# `Config.channels=...`; group 1 is the field, group 2 what follows the name (and its `:`/`=`).
_FIELD_PREFIX = re.compile(
    r"^\s*(?:[A-Za-z_]\w*\.)?([A-Za-z_]\w*)(?:\s*[:=]\s*|\s+(?=must\b))(.*)$", re.S)


def construct(cls: type, kwargs: dict, doc: Document, keys: Keys,
              named: Iterable[str] | Mapping[str, Keys] = ()) -> Any:
    """`cls(**kwargs)`, with a `ValueError`/`TypeError` from `__post_init__` as a `UserError`.

    A message that starts with a field name is attributed to where that field was set (`named`
    maps field names to their key paths, or lists fields set directly under `keys`) and says the
    key once: `file:line: 'train.max_steps' must be ...`. Otherwise it goes to `keys`:
    `file:line: invalid 'models.x.match': ...`.
    """
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as error:
        message = str(error)
        paths = dict(named) if isinstance(named, Mapping) else {n: keys + (n,) for n in named}
        match = _FIELD_PREFIX.match(message)
        if match and (match.group(1) in paths or match.group(1) in field_types(cls)):
            where_keys = tuple(paths.get(match.group(1), keys + (match.group(1),)))
            raise UserError(f"{doc.where(where_keys)}: '{dotted(where_keys)}' "
                            f"{match.group(2)}") from None
        raise UserError(f"{doc.where(keys)}: invalid '{dotted(keys) or cls.__name__}': "
                        f"{message}") from None
