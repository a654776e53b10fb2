"""A setting declared once: a dataclass field that carries its default, command-line flag, help and bounds.

The frozen settings types (:class:`rayexp.training.TrainConfig`, :class:`rayexp.settings.SweepSettings`)
declare their fields with :func:`option`; :func:`add_arguments` derives the command line from them,
:func:`from_args` builds the settings back from parsed arguments and :func:`problems` checks every value
against its declared bound. Adding a setting is one field, plus the code that uses it.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import MISSING, Field, field
from typing import Any, Callable

NESTED = "nested"  # metadata key of a field that holds another settings type, whose options are flattened


def option(
    default: Any = MISSING,
    *,
    help: str,
    flag: str | None = None,
    type: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    many: bool = False,
    repeat: bool = False,
    minimum: float | None = None,
    above: float | None = None,
    negate: bool = False,
    aliases: tuple[str, ...] = (),
    group: str = "sweep",
    metavar: str | tuple[str, ...] | None = None,
) -> Field:
    """A settings field with its command line.

    ``flag`` defaults to ``--<name with dashes>``; ``many``: one or more values (stored as a tuple); ``repeat``
    (with ``many``): the flag may be given several times, its values collected (given at all, they replace the
    default);
    ``negate``: a boolean that defaults to True and is turned off by ``flag`` (``--no-augment``);
    ``minimum``/``above``: the value must be ``>=``/``>`` that bound (None, an unset optional, always passes).
    """
    meta = dict(help=help, flag=flag, type=type, choices=choices, many=many, minimum=minimum, above=above)
    meta["repeat"] = repeat
    meta.update(negate=negate, aliases=aliases, group=group, metavar=metavar)
    return field(default=default, metadata=meta)


def nested(factory: Callable[[], Any]) -> Field:
    """A field holding another settings type (its options appear on the same command line)."""
    return field(default_factory=factory, metadata={NESTED: True})


def _options(cls: type) -> list[tuple[Field, type | None]]:
    """``(field, owner)`` of every option of ``cls``, nested settings flattened (owner: the nested type's field
    name, None at the top)."""
    out = []
    for f in dataclasses.fields(cls):
        if f.metadata.get(NESTED):
            out += [(inner, f.name) for inner, _ in _options(_nested_type(cls, f.name))]
        elif "help" in f.metadata:
            out.append((f, None))
    return out


def _nested_type(cls: type, name: str) -> type:
    return type(next(f for f in dataclasses.fields(cls) if f.name == name).default_factory())


def flag(f: Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def _value(settings: Any, f: Field, owner: str | None) -> Any:
    return getattr(getattr(settings, owner) if owner else settings, f.name)


def add_arguments(
    parser: argparse.ArgumentParser, defaults: Any, exclude: tuple[str, ...] = (), titles: dict[str, str] | None = None
) -> None:
    """Add an argument per option of ``defaults``' type, defaulting to ``defaults``' values, in argument groups
    named by each option's ``group`` (``titles`` gives a group its heading)."""
    groups: dict[str, Any] = {}
    for f, owner in _options(type(defaults)):
        if f.name in exclude:
            continue
        m = f.metadata
        name = m["group"]
        if name not in groups:
            groups[name] = parser.add_argument_group((titles or {}).get(name, name))
        default = _value(defaults, f, owner)
        kwargs: dict[str, Any] = {"dest": f.name, "help": m["help"]}
        if isinstance(default, bool) or m["negate"]:
            kwargs["action"] = "store_false" if m["negate"] else "store_true"
        else:
            kwargs.update(default=list(default) if m["many"] else default, type=m["type"], choices=m["choices"])
            if m["many"]:
                kwargs["nargs"] = "+"
            if m["repeat"]:
                kwargs.update(action="extend", default=None)
            if m["metavar"] or m["flag"]:  # a flag other than the field's name names its value too
                kwargs["metavar"] = m["metavar"] or m["flag"].lstrip("-").upper().replace("-", "_")
        groups[name].add_argument(flag(f), *m["aliases"], **kwargs)


def from_args(defaults: Any, args: argparse.Namespace) -> Any:
    """``defaults`` with every option found in ``args`` replaced by its parsed value (a new object)."""
    top: dict[str, Any] = {}
    inner: dict[str, dict[str, Any]] = {}
    for f, owner in _options(type(defaults)):
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if f.metadata["repeat"] and value is None:  # not given: the default stands
            continue
        if f.metadata["many"] and value is not None:
            value = tuple(value)
        (inner.setdefault(owner, {}) if owner else top)[f.name] = value
    for owner, values in inner.items():
        top[owner] = dataclasses.replace(getattr(defaults, owner), **values)
    return dataclasses.replace(defaults, **top)


def problems(cls: type, values: Any) -> list[str]:
    """Every option of ``cls`` whose value in ``values`` (parsed arguments, or a settings object without nested
    settings) is outside its declared bound or choices, as ``"--flag value: it must be >= 1"``."""
    found = []
    for f, _ in _options(cls):
        value, m = getattr(values, f.name, None), f.metadata
        if value is None:  # an unset optional, or not on this command line
            continue
        each = tuple(value) if m["many"] else (value,)
        shown = " ".join(map(str, each))
        if m["choices"] and any(v not in m["choices"] for v in each):
            found.append(f"{flag(f)} {shown!r}: use one of {', '.join(m['choices'])}")
        for bound, strict in ((m["minimum"], False), (m["above"], True)):
            if bound is not None and any(v < bound or (strict and v == bound) for v in each):
                found.append(f"{flag(f)} {shown}: it must be {'>' if strict else '>='} {bound:g}")
    return found
