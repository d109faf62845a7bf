"""A sweep file: a grid of captures described in TOML, read and checked point by point before anything runs.

::

    name = "pause-vs-mixup-quick"       # the sweep folder's default name (else the file's stem)
    [base]                              # RunConfig keys, flat or one table per section, as config files allow
    epochs = 10
    mixup_alpha = 0.4
    [axes]                              # every combination of these values; each a non-empty list
    seed = [0, 1, 2, 3, 4]
    [conditions.mixup]                  # named bundles of settings, together one more axis, "condition"
    [conditions.pause]
    mixup_pause = true
    enp_epochs = "auto"
    [submitit]                          # optional: parameters of the submitit executor (timeout_min, slurm_...)
    timeout_min = 120

A point's settings are ``base``, then its condition's, then its axis values; an axis may not also be set in
``base`` or by a condition (the grid would not say what a point is). Every point is validated as a capture
would be (:func:`dynamics.config.make_config`, :func:`dynamics.strategies.validate_strategies`); the first
problem raises one ConfigError naming the file, the point and the fix (``key="path"``). Points are ordered
seed first, then the other axes in file order, then the conditions, so a sweep stopped half-way has every
condition of its first seeds. Each point's run directory is named condition first, then the other axes,
then the seed (``pause-seed3``, ``mixup-width64-seed0``; numbers follow their axis, other values after a
dash: ``model-mlp``), in the characters ``A-Z a-z 0-9 . _ + = -``.
"""

from __future__ import annotations

import difflib
import itertools
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynamics.config import SECTION_OF, RunConfig, flatten_sections, make_config
from dynamics.errors import ConfigError
from dynamics.strategies import validate_strategies

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

TABLES = ("name", "description", "base", "axes", "conditions", "submitit")
"""The top-level keys a sweep file may hold."""
CONDITION = "condition"
"""The name of the axis the conditions form."""
EXECUTION_ONLY = ("threads",)
"""RunConfig keys that say how a run executes, not what it computes: no axis, not part of a point's settings."""
NAME_MAX = 200
_DEFAULTS = RunConfig().to_dict()
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")


@dataclass(frozen=True)
class Point:
    """One run of the grid: its directory name, condition (or None), axis values and validated settings."""

    name: str
    condition: str | None
    axes: dict[str, Any]
    config: RunConfig
    settings: dict[str, Any]
    """Every key whose value differs from RunConfig's default (execution-only keys such as threads left out)."""


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: its name, the tables as written (flattened) and every point of the grid."""

    name: str
    file: Path
    text: str
    description: str | None
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    conditions: dict[str, dict[str, Any]]
    submitit: dict[str, Any]
    points: tuple[Point, ...]

    @property
    def threads(self) -> int | None:
        """The threads setting of ``base``, if it gives one (the default of every run's thread count)."""
        return self.base.get("threads")


def safe_name(text: str) -> str:
    """``text`` with every character outside ``A-Z a-z 0-9 . _ + = -`` replaced by ``_`` and no leading dot."""
    cleaned = _UNSAFE.sub("_", text)
    return "_" + cleaned[1:] if cleaned.startswith(".") else cleaned


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def point_name(condition: str | None, axes: Mapping[str, Any]) -> str:
    """``<condition>-<axis><number>-<axis>-<text>-seed<seed>``: condition, the other axes in order, the seed."""
    parts = [] if condition is None else [condition]
    for axis, value in axes.items():
        if axis == "seed":
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        parts.append(f"{axis}{_value_text(value)}" if number else f"{axis}-{_value_text(value)}")
    if "seed" in axes:
        parts.append(f"seed{axes['seed']}")
    return safe_name("-".join(parts) or "run")


def _unknown(where: str, key: str) -> ConfigError:
    close = difflib.get_close_matches(key, SECTION_OF, n=1)
    fix = f"did you mean {close[0]}?" if close else f"valid keys are: {', '.join(sorted(SECTION_OF))}"
    return ConfigError(f"{where}: unknown setting {key!r}; {fix}", key="path")


def _settings(table: Any, where: str) -> dict[str, Any]:
    """A table of RunConfig settings (flat or by section), every key known."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table of settings, got {table!r}; write it as a [table]", key="path")
    flat = flatten_sections(table, where, key="path")
    for key in flat:
        if key not in SECTION_OF:
            raise _unknown(where, key)
    return flat


def _axes(table: Any, file: str, base: Mapping[str, Any]) -> dict[str, list[Any]]:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{file}: axes must be a table of lists ([axes] then seed = [0, 1]); fix it", key="path")
    axes: dict[str, list[Any]] = {}
    for raw, values in table.items():
        axis = str(raw).replace("-", "_")
        where = f"{file} [axes]"
        if axis == CONDITION:
            raise ConfigError(
                f"{where}: the {CONDITION} axis is made by the [conditions] tables; move it there", key="path"
            )
        if axis not in SECTION_OF:
            raise _unknown(where, str(raw))
        if axis in EXECUTION_ONLY:
            raise ConfigError(
                f"{where}: {axis} says how runs execute, not what they compute; set it in [base] instead", key="path"
            )
        if axis in axes:
            raise ConfigError(f"{where} lists the axis {axis} twice; keep one", key="path")
        if not isinstance(values, list):
            raise ConfigError(
                f"{where}: axis {axis} must be a list of values, got {values!r}; write {axis} = [{values!r}]",
                key="path",
            )
        if not values:
            raise ConfigError(
                f"{where}: axis {axis} is empty, so the grid has no point; give it at least one value", key="path"
            )
        for value in values:
            if isinstance(value, list | dict):
                raise ConfigError(f"{where}: axis {axis} holds {value!r}; give plain values", key="path")
        texts = [_value_text(value) for value in values]
        twice = [text for text in texts if texts.count(text) > 1]
        if twice:
            raise ConfigError(f"{where}: axis {axis} lists {twice[0]} twice; list each value once", key="path")
        if axis in base:
            raise ConfigError(f"{file}: {axis} is both set in [base] and an axis; keep one", key="path")
        axes[axis] = values
    return axes


def _conditions(table: Any, file: str, axes: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    if not isinstance(table, Mapping) or any(not isinstance(v, Mapping) for v in table.values()):
        raise ConfigError(
            f"{file}: conditions must hold one table per condition ([conditions.NAME]); fix it", key="path"
        )
    if not table:
        raise ConfigError(f"{file}: [conditions] is empty, so the grid has no point; add [conditions.NAME]", key="path")
    conditions: dict[str, dict[str, Any]] = {}
    seen: dict[str, str] = {}
    for name, settings in table.items():
        where = f"{file} [conditions.{name}]"
        folder = safe_name(str(name))
        if not folder:
            raise ConfigError(f"{where}: give the condition a non-empty name", key="path")
        if folder in seen:
            raise ConfigError(
                f"{file}: conditions {seen[folder]!r} and {name!r} give the same folder name {folder!r}; rename one",
                key="path",
            )
        seen[folder] = str(name)
        flat = _settings(settings, where)
        for key in flat:
            if key in axes:
                raise ConfigError(f"{where} sets {key}, which is an axis; remove it from one of them", key="path")
            if key in EXECUTION_ONLY:
                raise ConfigError(f"{where}: set {key} in [base], not per condition", key="path")
        conditions[folder] = flat
    return conditions


def _non_default(config: RunConfig) -> dict[str, Any]:
    return {
        key: value for key, value in config.to_dict().items() if value != _DEFAULTS[key] and key not in EXECUTION_ONLY
    }


def _points(file: str, base: dict[str, Any], axes: dict[str, list[Any]], conditions: dict[str, dict[str, Any]]):
    """Every point, seed first, then the other axes in file order, then the conditions."""
    order = (["seed"] if "seed" in axes else []) + [axis for axis in axes if axis != "seed"]
    names: dict[str, Point] = {}
    for combination in itertools.product(*(axes[axis] for axis in order)):
        values = dict(zip(order, combination, strict=True))
        in_file_order = {axis: values[axis] for axis in axes}
        for condition in conditions or [None]:
            settings = {**base, **(conditions[condition] if condition else {}), **in_file_order}
            name = point_name(condition, in_file_order)
            if len(name) > NAME_MAX:
                raise ConfigError(
                    f"{file}: point {name[:40]}... has a name of {len(name)} characters (at most {NAME_MAX}); "
                    "use shorter condition names or fewer axes",
                    key="path",
                )
            try:
                config = make_config(settings)
                validate_strategies(config)
            except ConfigError as err:
                raise ConfigError(f"{file}: point {name}: {err}", key="path") from None
            if name in names:
                raise ConfigError(
                    f"{file}: two points are both named {name} (their values differ only in characters a folder "
                    "name cannot hold); change the values",
                    key="path",
                )
            names[name] = Point(name, condition, in_file_order, config, _non_default(config))
    return tuple(names.values())


def parse_sweep(text: str, file: str | Path = "<sweep>") -> Sweep:
    """A sweep from its TOML text; ``file`` names it in errors and gives the default name (its stem)."""
    file = Path(file)
    try:
        payload = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"sweep file {file} is malformed ({err}); fix its syntax", key="path") from None
    unknown = [key for key in payload if key not in TABLES]
    if unknown:
        key = unknown[0]
        hint = "put settings in [base]" if str(key).replace("-", "_") in SECTION_OF else "remove it"
        raise ConfigError(
            f"{file}: unknown top-level key {key!r} (a sweep file holds {', '.join(TABLES)}); {hint}", key="path"
        )
    name = payload.get("name", file.stem)
    if not isinstance(name, str) or not safe_name(name):
        raise ConfigError(f"{file}: name must be a non-empty string, got {name!r}; fix it", key="path")
    description = payload.get("description")
    if description is not None and not isinstance(description, str):
        raise ConfigError(f"{file}: description must be a string, got {description!r}; fix it", key="path")
    base = _settings(payload.get("base", {}), f"{file} [base]")
    axes = _axes(payload.get("axes", {}), str(file), base)
    conditions = _conditions(payload["conditions"], str(file), axes) if "conditions" in payload else {}
    submitit = payload.get("submitit", {})
    if not isinstance(submitit, Mapping):
        raise ConfigError(f"{file}: submitit must be a table of executor parameters; fix it", key="path")
    points = _points(str(file), base, axes, conditions)
    return Sweep(safe_name(name), file, text, description, base, axes, conditions, dict(submitit), points)


def read_sweep(path: str | Path) -> Sweep:
    """The sweep in the TOML file ``path``; errors about it name it and have ``key="path"``."""
    path = Path(path)
    if path.suffix != ".toml":
        raise ConfigError(f"sweep file {path} must be a .toml file; rename or convert it", key="path")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"sweep file {path} does not exist; check its name and folder", key="path") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise ConfigError(f"sweep file {path} is unreadable ({reason}); fix its permissions", key="path") from None
    return parse_sweep(text, path)
