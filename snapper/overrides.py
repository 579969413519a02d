"""Dataclass configs to and from plain dicts, YAML and ``key=value`` overrides, type-checked.

Generic over any dataclass (the configs of :mod:`snapper.config`): a value is cast to its
field's type (``--set steps=abc`` is refused, ``1e-3`` is a float where a float is expected)
and every problem is a :class:`snapper.errors.ConfigError` naming the key, raised before any
work starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from typing import Any, TypeVar

import yaml

from snapper.errors import ConfigError

T = TypeVar("T")



def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _optional(tp: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        allows_none = len(args) < len(typing.get_args(tp))
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), allows_none
    return tp, False


def type_name(tp: Any) -> str:
    inner, allows_none = _optional(tp)
    origin = typing.get_origin(inner)
    if origin is typing.Union:
        name = " or ".join(type_name(a) for a in typing.get_args(inner))
    elif origin is dict:
        key, value = typing.get_args(inner) or (Any, Any)
        name = f"mapping of {type_name(key)} to {type_name(value)}"
    elif origin is list:
        (arg,) = typing.get_args(inner) or (Any,)
        name = f"list of {type_name(arg)}"
    elif origin is tuple:
        name = f"tuple of ({', '.join('...' if a is Ellipsis else type_name(a) for a in typing.get_args(inner))})"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} or null" if allows_none else name


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NULL = {"null", "none", "~", ""}


def _parse_text(text: str, tp: Any) -> Any:
    """A command-line string as a value of ``tp`` (no YAML guessing for scalars: ``1e-3`` is
    a float where a float is expected, ``abc`` is an error where an int is expected)."""
    inner, allows_none = _optional(tp)
    t = text.strip()
    if allows_none and t.lower() in _NULL:
        return None
    if inner is bool:
        if t.lower() in _TRUE:
            return True
        if t.lower() in _FALSE:
            return False
        raise TypeError
    if inner is int:
        return int(t)
    if inner is float:
        return float(t)
    if inner is str:
        return text
    if typing.get_origin(inner) in (list, tuple):
        if t.startswith("["):
            value = yaml.safe_load(t)
        else:  # a,b,c: strings for a list of str, YAML scalars otherwise
            items = [v.strip() for v in t.split(",") if v.strip()]
            value = items if typing.get_args(inner)[:1] == (str,) else [yaml.safe_load(v) for v in items]
        return _check_value(value, tp)
    return _check_value(yaml.safe_load(t), tp)


def _check_value(value: Any, tp: Any) -> Any:
    """``value`` (already typed: JSON/YAML) as ``tp``; ints widen to float, nothing else is cast."""
    inner, allows_none = _optional(tp)
    if value is None:
        if allows_none:
            return None
        raise TypeError
    if inner is Any:
        return value
    if typing.get_origin(inner) is typing.Union:  # several types: the first that takes the value
        for arg in typing.get_args(inner):
            try:
                return _check_value(value, arg)
            except (TypeError, ValueError):
                continue
        raise TypeError
    if typing.get_origin(inner) is dict:
        if not isinstance(value, dict):
            raise TypeError
        key_tp, value_tp = typing.get_args(inner) or (Any, Any)
        return {_check_value(k, key_tp): _check_value(v, value_tp) for k, v in value.items()}
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if inner is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if typing.get_origin(inner) is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError
        (arg,) = typing.get_args(inner) or (Any,)
        return [_check_value(v, arg) for v in value]
    if typing.get_origin(inner) is tuple:
        args = typing.get_args(inner)
        if not isinstance(value, (list, tuple)):
            raise TypeError
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_value(v, args[0]) for v in value)
        if len(args) != len(value):
            raise TypeError
        return tuple(_check_value(v, a) for v, a in zip(value, args))
    if isinstance(inner, type) and isinstance(value, inner):
        return value
    raise TypeError


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _cast(cls: type, key: str, value: Any, where: str) -> Any:
    tp = _field_types(cls)[key]
    try:
        return _parse_text(value, tp) if isinstance(value, str) else _check_value(value, tp)
    except (TypeError, ValueError, yaml.YAMLError):
        raise ConfigError(f"{where}: expected {type_name(tp)}, got {value!r}") from None


def _renames(cls: Any) -> dict[str, str]:
    """Old key -> new dotted key, from the dataclass's ``RENAMED`` class variable (keys of an
    earlier version that files saved then, and users' habits, still hold)."""
    return dict(getattr(cls, "RENAMED", None) or {})


def upgrade_keys(cls: type, data: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``data`` with the renamed keys of ``cls`` moved to their new place (nested sections
    created as needed); both an old key and its new one given is an error naming both."""
    renames = {old: new for old, new in _renames(cls).items() if old in data}
    if not renames:
        return data
    data = dict(data)
    for old, new in renames.items():
        value = data.pop(old)
        node = data
        *sections, leaf = new.split(".")
        for s in sections:
            sub = node.get(s)
            node[s] = to_dict(sub) if dataclasses.is_dataclass(sub) else dict(sub or {})
            node = node[s]
        if leaf in node:
            raise ConfigError(f"{where}{old} and {where}{new} are the same setting: give only {where}{new}")
        node[leaf] = value
    return data


def canonical_key(cls: type, key: str) -> str:
    """A dotted override key with renamed parts replaced by their new names
    (``mlflow`` -> ``tracking.enabled``); unknown parts are left for the caller to refuse."""
    parts, out = key.split("."), []
    current: Any = cls
    while parts:
        part = parts.pop(0)
        if current is not None and part in _renames(current):
            head, *rest = _renames(current)[part].split(".")
            part, parts = head, rest + parts
        out.append(part)
        tp = _optional(_field_types(current).get(part))[0] if current is not None else None
        current = tp if dataclasses.is_dataclass(tp) else None
    return ".".join(out)


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build a dataclass from a (possibly partial) dict, checking every key and value type."""
    data = upgrade_keys(cls, dict(data or {}), where)
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {', '.join(where + k for k in unknown)}; "
                          f"known: {', '.join(sorted(names))}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp, _ = _optional(hints[name])
        if dataclasses.is_dataclass(tp):
            if isinstance(value, dict):
                value = from_dict(tp, value, f"{where}{name}.")  # type: ignore[type-var]
            elif not isinstance(value, tp):
                raise ConfigError(f"{where}{name}: expected a mapping of {tp.__name__} fields, got {value!r}")
        else:
            value = _cast(cls, name, value, f"{where}{name}")
        kwargs[name] = value
    return cls(**kwargs)  # type: ignore[call-arg]


def parse_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, value = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {item!r} has no key")
    return key.strip(), value


def apply_overrides(cfg: T, overrides: "list[str] | dict[str, Any]") -> T:
    """Apply ``a.b=value`` strings (cast to the field's type) or a ``{"a.b": value}`` dict
    (values already typed, e.g. JSON from a flow parameter), checked before any work starts."""
    items = list(overrides.items()) if isinstance(overrides, dict) else [parse_override(o) for o in overrides]
    data = to_dict(cfg)
    for key, value in items:
        key = canonical_key(type(cfg), key)
        node: dict[str, Any] = data
        cls: type = type(cfg)
        parts = key.split(".")
        for p in parts[:-1]:
            tp = _optional(_field_types(cls).get(p, None))[0] if p in node else None
            if tp is None or not dataclasses.is_dataclass(tp):
                raise ConfigError(f"{key}: {p!r} is not a section of {cls.__name__}")
            node, cls = node[p], tp
        leaf = parts[-1]
        if leaf not in node:
            known = ", ".join(sorted(node))
            raise ConfigError(f"{key}: unknown key {leaf!r} of {cls.__name__} (known: {known})")
        if dataclasses.is_dataclass(_optional(_field_types(cls)[leaf])[0]):
            raise ConfigError(f"{key} is a section; set its fields ({key}.<field>=...)")
        node[leaf] = _cast(cls, leaf, value, key)
    return from_dict(type(cfg), data)


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The one YAML loader: a mapping at the top level, or a ConfigError naming the file."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_yaml(cls: type[T], path: str | os.PathLike[str]) -> T:
    return from_dict(cls, read_yaml(path))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def dump_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def inference_only_fields(cls: type) -> set[str]:
    """Names of the fields marked ``INFERENCE_ONLY`` (see its comment)."""
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get("inference_only")}
