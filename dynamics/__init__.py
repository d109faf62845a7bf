"""Record what training does in its first, decisive phase, and store it as an xarray-readable Zarr run."""

from dynamics.errors import ConfigError, DynamicsError, NonFiniteLossError, StoreError
from dynamics.store import open_run

__all__ = ["ConfigError", "DynamicsError", "NonFiniteLossError", "Recorder", "StoreError", "open_run"]


def __getattr__(name: str) -> type:
    """``Recorder`` is imported on first use (PEP 562), so that reading a store (``dynamics.store``, the
    analyses) does not import the recorder, its probes and the data sets they pull in."""
    if name == "Recorder":
        from dynamics.recorder import Recorder

        return Recorder
    raise AttributeError(f"module 'dynamics' has no attribute {name!r}")
