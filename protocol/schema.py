"""Field specifications carried in type annotations, so each message is declared once.

A message is a dataclass whose fields are annotated `Annotated[T, Spec]`. The codec
reads these specs to encode, and to decode strictly: every field is required unless
it has a default, every array has an allow-listed dtype and a shape pattern, every
string and list has a cap. Shape symbols ("K", "V") must agree within one message.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Arr", "ArrMap", "Bool", "Float", "Int", "Seq", "Str", "StrSeq", "Spec"]


def _bound(v: int) -> str:
    for base in (64, 63, 32, 31):
        if v == 2**base - 1:
            return f"2^{base}-1"
        if v == -(2**base):
            return f"-2^{base}"
    return str(v)


class Spec:
    """Base of all field specs. `describe()` is the wire type as protocol/SPEC.md writes it."""

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Spec):
    """A Python int (never bool) in [lo, hi]."""

    lo: int = -(2**63)
    hi: int = 2**64 - 1

    def describe(self) -> str:
        return f"int [{_bound(self.lo)}, {_bound(self.hi)}]"


@dataclass(frozen=True)
class Float(Spec):
    """A float; NaN allowed only where `allow_nan`, infinities never."""

    allow_nan: bool = False

    def describe(self) -> str:
        return "float, finite or NaN" if self.allow_nan else "float, finite"


@dataclass(frozen=True)
class Bool(Spec):
    """A bool."""

    def describe(self) -> str:
        return "bool"


@dataclass(frozen=True)
class Str(Spec):
    """A UTF-8 string of at most `max_len` characters."""

    max_len: int = 256

    def describe(self) -> str:
        return f"str <= {self.max_len}"


@dataclass(frozen=True)
class StrSeq(Spec):
    """A list of strings."""

    max_items: int = 64
    max_len: int = 256

    def describe(self) -> str:
        return f"list <= {self.max_items} of str <= {self.max_len}"


@dataclass(frozen=True)
class Arr(Spec):
    """A numpy array.

    dtypes: allowed little-endian dtype strings, the first one is what encoders use.
    shape: per-dimension int (exact), str (a symbol bound once per message), or None (any size).
    allow_nan: NaN marks "missing" in this array; infinities are never allowed in floats.
    """

    dtypes: tuple[str, ...]
    shape: tuple[int | str | None, ...]
    allow_nan: bool = False

    def describe(self) -> str:
        dims = ", ".join("*" if d is None else str(d) for d in self.shape)
        floats = self.dtypes[0][1] == "f"
        nan = (", finite or NaN" if self.allow_nan else ", finite") if floats else ""
        return f"array {'|'.join(self.dtypes)} [{dims}]{nan}"


@dataclass(frozen=True)
class ArrMap(Spec):
    """A str -> 1-D or 2-D finite float array mapping (e.g. estimator body-model parameters)."""

    max_items: int = 16
    max_len: int = 4096

    def describe(self) -> str:
        return f"map <= {self.max_items} of str <= 64 -> array <f4|<f8 1-D or 2-D <= {self.max_len} values, finite"


@dataclass(frozen=True)
class Seq(Spec):
    """A list of nested message structs of type `item` (a dataclass with annotated fields)."""

    item: type
    max_items: int = 16

    def describe(self) -> str:
        return f"list <= {self.max_items} of {self.item.__name__}"
