"""One way to configure a program: a dataclass of settings, read from flags, the environment and
a YAML file.

Each field of a settings dataclass is one setting; `setting(...)` gives it a help text and, where
the defaults below do not fit, its flag, choices, environment variable and help group.

- `add_flags(parser, *classes)` registers one flag per field: `--batch-size` for `batch_size`;
  a bool that defaults to False is a switch `--name`, one that defaults to True is `--no-name`;
  a `list[X]` takes one or more values. A flag that is not given stays out of the namespace, so
  it never hides a value of a lower layer.
- `resolve(cls, args, ...)` builds the settings, each value from the first layer that has it:
  flags given > environment > YAML file > `defaults` > the dataclass's defaults ("flags win").
  The environment variable of a field is `<env_prefix><FIELD>` (`GENAUG_MODEL_DIR`) or the one
  its `setting(env=...)` names; an empty variable counts as unset. YAML keys are field names
  with `_` or `-`. Values from the environment and the file are converted to the field's type
  (`int`, `float`, `str`, `bool`, `Path`, a `list` of those, optionally `| None`); an unknown key,
  a value of the wrong type or outside the choices raises `ConfigError` naming the flag, the key
  and where it came from.
- `command_line(cls, values)` writes values back as the flags that set them (to log a run).

Fields sharing `setting(exclusive=NAME)` are one choice (e.g. a target given three ways): they
are mutually exclusive flags, and the highest layer that sets any of them sets the choice.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

SCALARS = (str, int, float, bool, Path)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               Path: "a path"}  # fmt: skip


class ConfigError(ValueError):
    """A setting from a file or the environment that cannot be used; names the key."""

    def __init__(self, key: str | None, message: str):
        super().__init__(message)
        self.key = key


def setting(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    help: str = "",
    flag: str | None = None,
    choices: tuple | list | None = None,
    env: str | bool | None = None,
    group: str | None = None,
    exclusive: str | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field with what the flag, the YAML key and the env var need to know.

    `help` may contain `{default}` (the effective default, see `add_flags`); `env` names the
    variable (a string), turns it off (False) or leaves it to the prefix (None); `cli=False`
    makes a field that only code sets (no flag, key or variable). A list, dict or set default
    is copied for each instance."""
    if isinstance(default, (list, dict, set)):
        default, default_factory = dataclasses.MISSING, functools.partial(type(default), default)
    metadata = dict(help=help, flag=flag, choices=None if choices is None else tuple(choices),
                    env=env, group=group, exclusive=exclusive, cli=cli)  # fmt: skip
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One field as the configuration sees it (see `settings_of`)."""

    name: str
    type: type  # the scalar type: one of SCALARS
    optional: bool
    many: bool
    default: Any  # dataclasses.MISSING when the field has none
    help: str
    flag: str
    choices: tuple | None
    env: str | bool | None
    group: str | None
    exclusive: str | None

    @property
    def switch(self) -> bool:
        return self.type is bool and not self.many

    def env_name(self, prefix: str | None) -> str | None:
        if isinstance(self.env, str):
            return self.env
        if self.env is False or not prefix:
            return None
        return prefix + self.name.upper()


@functools.cache
def settings_of(cls: type) -> tuple[Setting, ...]:
    """The configurable fields of a settings dataclass, in field order. A field redefined in a
    subclass (a new default) keeps the help, flag and group its base class gave it."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        meta: dict = {}
        for base in reversed(cls.__mro__):
            inherited = getattr(base, "__dataclass_fields__", {}).get(f.name)
            if inherited is not None:
                meta.update({k: v for k, v in inherited.metadata.items() if v not in (None, "")})
        if not meta.get("cli", True):
            continue
        scalar, optional, many = _kind(cls, f.name, hints[f.name])
        default = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        dashed = f.name.replace("_", "-")
        flag = meta.get("flag") or (f"--no-{dashed}" if scalar is bool and default is True
                                    else f"--{dashed}")  # fmt: skip
        found.append(Setting(f.name, scalar, optional, many, default, meta.get("help", ""), flag,
                             meta.get("choices"), meta.get("env"), meta.get("group"),
                             meta.get("exclusive")))  # fmt: skip
    return tuple(found)


def _kind(cls: type, name: str, hint: Any) -> tuple[type, bool, bool]:
    """(scalar type, optional, list) of a type hint; TypeError for what has no flag."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(parts) < len(typing.get_args(hint))
        hint = parts[0] if len(parts) == 1 else hint
    many = typing.get_origin(hint) is list
    if many:
        (hint,) = typing.get_args(hint) or (str,)
    if hint not in SCALARS:
        raise TypeError(f"{cls.__name__}.{name}: {hint} has no flag (use setting(cli=False))")
    return hint, optional, many


def flags_of(*classes: type) -> dict[str, str]:
    """Field name -> its flag, over the classes (the first class that has a field names it)."""
    flags: dict[str, str] = {}
    for cls in classes:
        for s in settings_of(cls):
            flags.setdefault(s.name, s.flag)
    return flags


def add_flags(parser, *classes: type, defaults: Mapping[str, Any] | None = None) -> None:
    """One flag per field of the classes (a field several classes share is added once, as the
    first one declares it); `{default}` in a help text becomes `defaults[name]` or the field's
    default. Flags with a `group` go into the argument group of that title."""
    defaults = defaults or {}
    groups: dict[str, Any] = {}
    exclusive: dict[tuple[str | None, str], Any] = {}
    seen: set[str] = set()
    for cls in classes:
        for s in settings_of(cls):
            if s.name in seen:
                continue
            seen.add(s.name)
            target = parser
            if s.group is not None:
                if s.group not in groups:
                    groups[s.group] = parser.add_argument_group(s.group)
                target = groups[s.group]
            if s.exclusive is not None:
                key = (s.group, s.exclusive)
                if key not in exclusive:
                    exclusive[key] = target.add_mutually_exclusive_group()
                target = exclusive[key]
            default = defaults.get(s.name, s.default)
            help_text = s.help.replace("{default}", str(default)) or None
            kwargs: dict[str, Any] = dict(dest=s.name, default=argparse.SUPPRESS, help=help_text)
            if s.switch:
                kwargs["action"] = "store_false" if s.default is True else "store_true"
            else:
                kwargs["type"] = s.type
                if s.many:
                    kwargs["nargs"] = "+"
                if s.choices is not None:
                    kwargs["choices"] = s.choices
            target.add_argument(s.flag, **kwargs)


def resolve(
    cls: type,
    given: argparse.Namespace | Mapping[str, Any] | None = None,
    *,
    yaml_file: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    env_prefix: str | None = None,
    defaults: Mapping[str, Any] | None = None,
):
    """`cls(...)` from the layers: `given` (parsed flags; keys that are no field of `cls` are
    ignored) > `env` (default os.environ) > the YAML file > `defaults` > the class's own."""
    given = vars(given) if isinstance(given, argparse.Namespace) else dict(given or {})
    names = {f.name for f in dataclasses.fields(cls)}
    layers = [dict(defaults or {})]
    if yaml_file is not None:
        layers.append(read_yaml(cls, yaml_file))
    layers.append(read_env(cls, os.environ if env is None else env, env_prefix))
    layers.append({k: v for k, v in given.items() if k in names})
    choice_of = {s.name: s.exclusive for s in settings_of(cls) if s.exclusive is not None}
    values: dict[str, Any] = {}
    for layer in layers:
        chosen = {choice_of[k] for k in layer if k in choice_of}
        for name in [k for k in values if choice_of.get(k) in chosen]:
            del values[name]  # this layer makes the choice again
        values.update(layer)
    return cls(**values)


def read_yaml(cls: type, path: Path | str) -> dict[str, Any]:
    """The settings a YAML file gives (keys with `_` or `-`), converted and checked."""
    loaded = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(None, f"{path}: expected a mapping of option names to values")
    table = {s.name: s for s in settings_of(cls)}
    values: dict[str, Any] = {}
    for key, raw in loaded.items():
        name = str(key).replace("-", "_")
        if name not in table:
            raise ConfigError(str(key), f"{path}: unknown option {str(key)!r}")
        if name in values:
            raise ConfigError(str(key), f"{path}: option {name!r} is given twice")
        values[name] = convert(table[name], raw, f"{key} in {path}")
    return values


def read_env(cls: type, env: Mapping[str, str], prefix: str | None) -> dict[str, Any]:
    """The settings the environment gives, converted and checked."""
    values = {}
    for s in settings_of(cls):
        variable = s.env_name(prefix)
        raw = env.get(variable) if variable else None
        if raw:
            values[s.name] = convert(s, raw, f"${variable}", text=True)
    return values


def convert(s: Setting, raw: Any, source: str, text: bool = False) -> Any:
    """`raw` (a YAML value, or a string when `text`) as the field's type."""
    if raw is None:
        if s.optional:
            return None
        raise ConfigError(s.name, f"{s.flag} needs a value ({source})")
    if s.many:
        if text:
            items = [part for part in re.split(r"[,\s]+", raw) if part]
        else:
            items = raw if isinstance(raw, list) else [raw]
        return [_scalar(s, item, source) for item in items]
    return _scalar(s, raw, source)


def _scalar(s: Setting, raw: Any, source: str) -> Any:
    value = _as_type(s.type, raw)
    if value is None:
        raise ConfigError(s.name, f"{s.flag} expects {_TYPE_NAMES[s.type]}, got {raw!r} ({source})")
    if s.choices is not None and value not in s.choices:
        allowed = ", ".join(map(str, s.choices))
        raise ConfigError(s.name, f"{s.flag} must be one of {allowed}, got {raw!r} ({source})")
    return value


def _as_type(kind: type, raw: Any) -> Any:
    """`raw` converted to `kind`, or None when it is not one (bools are never numbers)."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        word = str(raw).strip().lower() if isinstance(raw, (str, int)) else None
        return True if word in _TRUE else False if word in _FALSE else None
    if isinstance(raw, bool):
        return None
    if kind is str:
        return raw if isinstance(raw, str) else None
    if kind is Path:
        return Path(raw) if isinstance(raw, (str, Path)) else None
    if kind is int and isinstance(raw, float):
        return None
    try:
        return kind(raw)
    except (TypeError, ValueError):
        return None


def command_line(cls: type, values: Mapping[str, Any]) -> list[str]:
    """The flags that set `values` (in their order); a None value or an unset switch adds none."""
    table = {s.name: s for s in settings_of(cls)}
    words: list[str] = []
    for name, value in values.items():
        s = table[name]
        if s.switch:
            if bool(value) == (s.default is not True):  # the value the switch sets
                words.append(s.flag)
        elif value is not None:
            words += [s.flag, *(str(v) for v in (value if s.many else [value]))]
    return words
