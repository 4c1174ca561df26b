"""What every config model shares: strict parsing, YAML in and out, ``--set``.

Models reject unknown keys and do no file I/O; ``parse_config`` turns pydantic's
errors into one ``ConfigError`` naming every bad field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from twodtm.errors import ConfigError


class _Strict(BaseModel):
    """Frozen model that rejects unknown keys, NaN and infinity."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _resolved(base: str | os.PathLike[str], value: str) -> str:
    """``value`` resolved against ``base`` unless it is absolute."""
    path = Path(value)
    return str(path if path.is_absolute() else Path(base) / path)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key; check its spelling against `twodtm config example`"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


_ModelT = TypeVar("_ModelT", bound=BaseModel)


def parse_config(model: type[_ModelT], data: object, source: str = "config") -> _ModelT:
    """Validate ``data`` (already parsed YAML) against ``model``.

    Raises
    ------
    ConfigError
        Naming every invalid field and what is wrong with it.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping of keys, found {type(data).__name__}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_yaml(path: str | os.PathLike[str]) -> object:
    """Read a YAML file, turning I/O and syntax problems into ConfigError."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{file}: cannot read the config ({err.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text; pass the YAML config") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{file}: not valid YAML: {err}") from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` pairs (dotted keys allowed), each value read as YAML."""
    found: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--set {pair!r}: write KEY=VALUE, e.g. --set compute.workers=2"
            )
        found[key.strip()] = yaml.safe_load(value)
    return found


def with_overrides(config: _ModelT, pairs: list[str]) -> _ModelT:
    """Return ``config`` with ``section.key=value`` overrides applied and validated."""
    data = config.model_dump(mode="json")
    for key, value in parse_overrides(pairs).items():
        *sections, leaf = key.split(".")
        node = data
        for name in sections:
            if not isinstance(node.get(name), dict):
                raise ConfigError(f"--set {key}: {name!r} is not a config section")
            node = node[name]
        node[leaf] = value
    return parse_config(type(config), data, "--set options")


def dump_yaml(config: BaseModel) -> str:
    """YAML text of a config that the loader accepts back."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


__all__ = [
    "dump_yaml",
    "load_yaml",
    "parse_config",
    "parse_overrides",
    "with_overrides",
]
