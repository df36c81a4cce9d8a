"""Strict conversion between plain dicts (JSON, YAML) and typed dataclasses.

Unknown keys are errors everywhere: a misspelt option must never be dropped silently."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


MAX_YAML_BYTES = 1 << 20  # a recipe is a few KB
MAX_YAML_NODES = 100_000  # values after aliases are expanded (a recipe has a few hundred)


class ConfigError(ValueError):
    """A configuration that does not match its schema (unknown key, wrong type, bad value)."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: cannot interpret {value!r}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: expected one of {list(allowed)}, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or (isinstance(value, float) and not value.is_integer())):  # 1.5, NaN and infinity
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys and values of the wrong type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        hints = [f"{key!r} -> {close!r}" for key in unknown if (close := did_you_mean(key, fields))]
        raise ConfigError(f"{where}: unknown key(s) {unknown}"
                          + (f"; did you mean {', '.join(hints)}?" if hints else "")
                          + f"; known keys are {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """Dataclass (possibly nested) -> plain dict of JSON-friendly values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _initials(name: str) -> str:
    return "".join(part[0] for part in name.split("_") if part)


def did_you_mean(word: str, candidates: Any) -> str | None:
    """The candidate a misspelt dotted key `word` most likely meant, or None when none is close.

    Keys of the same section come first (`optim.learning_rate` looks among `optim.*`); within them an
    abbreviation (`lr` for `learning_rate`, or the reverse) wins, then the closest spelling (difflib)."""
    import difflib

    names = [str(c) for c in candidates]
    section, _, last = word.rpartition(".")
    same = [c for c in names if c.rpartition(".")[0] == section]
    for pool in (same, names):
        for cand in pool:
            tail = cand.rpartition(".")[2]
            if len(tail) > 1 and (_initials(last) == tail or _initials(tail) == last):
                return cand
        close = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
        if close:
            return close[0]
    return None


def _key_paths(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key path of a nested dict ('optim.lr', 'run.out_dir', ...)."""
    if not isinstance(node, dict):
        return []
    paths = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        paths.append(path)
        paths += _key_paths(value, f"{path}.")
    return paths


def _unknown_override(item: str, key: str, data: dict[str, Any]) -> ConfigError:
    close = did_you_mean(key, _key_paths(data))
    return ConfigError(f"override {item!r}: unknown key {key!r}" + (f"; did you mean {close!r}?" if close else ""))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings (value parsed as YAML) to a nested dict, returning a new dict.

    A key path that does not exist is an error, so a typo cannot create a new, unused option."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise _unknown_override(item, key.strip(), data)
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise _unknown_override(item, key.strip(), data)
        node[parts[-1]] = parse_override_value(item, raw)
    return out


def parse_override_value(item: str, raw: str) -> Any:
    """The YAML value of the override `item` (`key=raw`); a ConfigError naming it when it is not YAML."""
    import yaml

    try:
        return safe_yaml(raw, f"override {item!r}")
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r} has a value that is not valid YAML: "
                          f"{' '.join(str(err).split())} (quote it as a string if that is what you mean)") from err


def safe_yaml(text: str, where: str, max_bytes: int = MAX_YAML_BYTES, max_nodes: int = MAX_YAML_NODES) -> Any:
    """YAML parsed with the safe loader after its size and its size with aliases expanded are checked: a
    1 KB file of nested aliases ("billion laughs") expands to gigabytes."""
    import yaml

    if len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ConfigError(f"{where} holds {len(text):,} characters, more than the {max_bytes:,} bytes a recipe "
                          "may have")
    node = yaml.compose(text, Loader=yaml.SafeLoader)  # the graph, aliases shared: no expansion yet
    sizes: dict[int, int] = {}

    def expanded(n: Any) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        sizes[id(n)] = 1  # a recursive alias counts once here; the loader refuses it later anyway
        total = 1
        if isinstance(n, yaml.SequenceNode):
            total += sum(expanded(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total += sum(expanded(k) + expanded(v) for k, v in n.value)
        total = min(total, max_nodes + 1)
        sizes[id(n)] = total
        return total

    if node is not None and expanded(node) > max_nodes:
        raise ConfigError(f"{where} expands to more than {max_nodes:,} values through its aliases (&name / "
                          "*name); a recipe has a few hundred")
    return yaml.safe_load(text)


def read_yaml_file(path: Any, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """A YAML file through `safe_yaml`, reading no more than the budget allows (a recipe path may name a
    huge file or a device)."""
    with open(path, encoding="utf-8") as f:
        text = f.read(max_bytes + 1)
    return safe_yaml(text, f"recipe {path}", max_bytes)
