"""Named bundles of probes, so a run says ``probes="minimal"`` instead of listing classes."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

from dynamics.errors import ConfigError
from dynamics.probes.activations import ActivationStats
from dynamics.probes.base import Probe
from dynamics.probes.loss import LossAccuracy
from dynamics.probes.parameters import DistanceFromInit, GradNorm, ParamNorm, UpdateNorm
from dynamics.probes.trajectory import Sketch

PROBES: dict[str, Callable[[], Probe]] = {
    "loss": LossAccuracy,
    "grad_norm": GradNorm,
    "param_norm": ParamNorm,
    "dist_from_init": DistanceFromInit,
    "update_norm": UpdateNorm,
    "activations": ActivationStats,
    "sketch": Sketch,
}

PRESETS: dict[str, tuple[str, ...]] = {
    "default": ("loss", "grad_norm", "param_norm", "dist_from_init", "update_norm", "activations", "sketch"),
    "minimal": ("loss", "grad_norm", "param_norm"),
    "loss": ("loss",),
    "trajectory": ("loss", "param_norm", "dist_from_init", "update_norm", "sketch"),
}


def register_probe(name: str) -> Callable[[type[Probe]], type[Probe]]:
    """Class decorator listing a probe under ``name``, so that ``probes=["loss", name]`` (and the capture's
    ``probes`` setting, with the probe's module in ``probe_modules``) records it. The class must build with no
    arguments; built-in probes are listed in ``PROBES`` above."""

    def register(cls: type[Probe]) -> type[Probe]:
        if name in PROBES or name in PRESETS:
            raise ValueError(f"probe name {name!r} is taken by a built-in probe or preset; choose another")
        PROBES[name] = cls
        return cls

    return register


def import_probe_modules(modules: str | None) -> None:
    """Import the comma-separated ``modules`` (None: none), whose ``register_probe`` decorators list their probes."""
    for name in (part.strip() for part in (modules or "").split(",")):
        if not name:
            continue
        try:
            importlib.import_module(name)
        except Exception as err:  # a user module may fail in any way while it runs
            raise ConfigError(
                f"probe module {name!r} cannot be imported ({type(err).__name__}: {err}); put it on PYTHONPATH "
                "or correct probe_modules",
                key="probe_modules",
            ) from None


def resolve_probes(spec: str | Sequence[str | Probe]) -> list[Probe]:
    """Turn a preset name, or a list of probe names and instances, into fresh probe instances."""
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ConfigError(f"unknown probe preset {spec!r}; choose one of: {', '.join(PRESETS)}", key="probes")
        spec = PRESETS[spec]
    probes: list[Probe] = []
    for item in spec:
        if isinstance(item, Probe):
            probes.append(item)
        elif item in PROBES:
            probes.append(PROBES[item]())
        else:
            raise ConfigError(f"unknown probe {item!r}; choose from: {', '.join(PROBES)}")
    names = [p.name for p in probes]
    if len(set(names)) != len(names):
        raise ConfigError(f"probe listed twice in {names}; list each probe once")
    return probes
