"""Field declarations, checked in one place: type, range and allowed values live in annotations.

A config field says what it accepts next to its name, e.g.

    max_steps: PositiveInt | None = 1000
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    betas: tuple[UnitOpen, UnitOpen] = (0.9, 0.9)

`convert(value, annotation)` checks a value against such an annotation and returns it converted
(list -> tuple, int -> float, YAML 1.1's `1e-3` string -> float), raising `Mismatch` that says
which part failed and what was expected. Two callers, one rule: the YAML loader
(harness.experiment.yaml_loader) wraps a `Mismatch` into `file:line: 'dotted.key' must be ...`,
and `validate_fields(self)` in a config's `__post_init__` applies the same rule to a config built
in code (or from a sweep point), raising `ValueError("field must be ...")`.

No torch and no YAML here: the engine's configs and the experiment schema both use it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

# --------------------------------------------------------------------------- ranges


@dataclass(frozen=True)
class Range:
    """low <= value <= high (either end open, either end absent); NaN and inf never hold."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high
                                         or (self.high_open and value == self.high))

    def text(self) -> str:
        """'>= 1', '> 0', 'in [0, 1)'."""
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return "finite"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(0)]
UnitOpen = Annotated[float, Range(0, 1, high_open=True)]      # [0, 1): rates, betas
UnitClosed = Annotated[float, Range(0, 1)]                    # [0, 1]: fractions
UnitExclusive = Annotated[float, Range(0, 1, low_open=True, high_open=True)]  # (0, 1)


# --------------------------------------------------------------------------- describing


def describe(value: Any) -> str:
    """`'lots' (str)`: a value as a message shows it, cut to 40 characters."""
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({type(value).__name__})"


def type_name(tp: Any, ranges: bool = False) -> str:
    """'an integer or null'; with `ranges`, 'an integer >= 1 or null'."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated:
        inner = type_name(args[0], ranges)
        found = [a for a in tp.__metadata__ if isinstance(a, Range)]
        return f"{inner} {found[0].text()}" if ranges and found else inner
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
        return " or ".join(type_name(arm, ranges) for arm in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list) or tp in (tuple, list):
        if not args:
            return "a list"
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} items, each {type_name(args[0], ranges)}"
        return f"a list, each item {type_name(args[0], ranges)}"
    if origin is dict or tp is dict or (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


# --------------------------------------------------------------------------- converting


class Mismatch(Exception):
    """`value` at `suffix` (a key path below the field) is not `expected`."""

    def __init__(self, suffix: tuple, expected: str, value: Any):
        super().__init__(f"must be {expected}, got {describe(value)}")
        self.suffix, self.expected, self.value = suffix, expected, value


_YAML11_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
Builder = Callable[[type, dict, tuple], Any]  # (dataclass, mapping, suffix) -> instance


class _NoMatch(Exception):
    """This arm of the annotation does not accept the value (internal); `final`: the range
    failure's message stands as it is (a union does not restate it)."""

    def __init__(self, range_failure: Mismatch | None = None, final: bool = False):
        super().__init__()
        self.range_failure = range_failure
        self.final = final


# Every integer fits a signed 64-bit word: torch sizes, seeds and list lengths are C integers,
# and a bigger one fails deep inside them (OverflowError) instead of here.
INT_LIMIT = 2**63


def convert(value: Any, tp: Any, build: Builder | None = None, suffix: tuple = ()) -> Any:
    """`value` checked against the annotation `tp` and converted; `Mismatch` otherwise.

    `build` makes a nested dataclass from a mapping (the loader passes one that knows the file);
    without it only instances of the dataclass are accepted.
    """
    try:
        return _convert(value, tp, build, suffix)
    except _NoMatch as failure:
        if failure.range_failure is not None:
            raise failure.range_failure from None
        raise Mismatch(suffix, type_name(tp), value) from None


def _convert(value: Any, tp: Any, build: Builder | None, suffix: tuple) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin is Annotated:
        converted = _convert(value, args[0], build, suffix)
        for check in tp.__metadata__:
            if isinstance(check, Range) and not check.holds(converted):
                raise _NoMatch(Mismatch(suffix, type_name(tp, ranges=True), value))
        return converted
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _NoMatch
        range_failure = None
        for arm in args:
            if arm is type(None):
                continue
            try:
                return _convert(value, arm, build, suffix)
            except _NoMatch as failure:
                if failure.final:
                    raise
                range_failure = range_failure or failure.range_failure
        if range_failure is not None:  # the right type, out of range: say the whole union
            raise _NoMatch(Mismatch(suffix, type_name(tp, ranges=True), value))
        raise _NoMatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _NoMatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -INT_LIMIT <= value < INT_LIMIT:
                raise _NoMatch(Mismatch(suffix, "an integer that fits in 64 bits (below 2^63)",
                                        value), final=True)
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)  # 1e6 is a float in YAML; accept it where an integer is meant
        raise _NoMatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _YAML11_FLOAT.match(value.strip()):
            return float(value)  # YAML 1.1 reads `1e-3` and `2.0e9` (no sign) as strings
        raise _NoMatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _NoMatch
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _NoMatch
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _NoMatch
        if not args:
            items = list(value)
        elif origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _NoMatch
            items = [convert(v, a, build, suffix + (i,))
                     for i, (v, a) in enumerate(zip(value, args))]
        else:
            items = [convert(v, args[0], build, suffix + (i,)) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _NoMatch
        if len(args) == 2:
            return {convert(k, args[0], build, suffix): convert(v, args[1], build, suffix + (k,))
                    for k, v in value.items()}
        return dict(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict) or build is None:
            raise _NoMatch
        return build(tp, value, suffix)
    return value  # an annotation we do not check (e.g. a callable): accept as given


# --------------------------------------------------------------------------- dataclasses


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations (with their Annotated checks) of a dataclass's init fields."""
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:  # noqa: BLE001 - an annotation that cannot be resolved: check nothing
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def validate_fields(obj: Any, section: str = "") -> None:
    """In a frozen dataclass's `__post_init__`: every field converted by its annotation, or a
    `ValueError` naming the field, under its section when given (`train.max_steps must be an
    integer >= 1 or null, got -3 (int)`)."""
    for name, tp in field_types(type(obj)).items():
        value = getattr(obj, name)
        try:
            converted = convert(value, tp)
        except Mismatch as error:
            where = ".".join([*([section] if section else []), name, *map(str, error.suffix)])
            raise ValueError(f"{where} {error}") from None
        if converted is not value:
            object.__setattr__(obj, name, converted)
