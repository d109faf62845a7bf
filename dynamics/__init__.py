"""Record what training does in its first, decisive phase, and store it as an xarray-readable Zarr run."""

from dynamics.errors import ConfigError, DynamicsError, NonFiniteLossError, StoreError
from dynamics.recorder import Recorder
from dynamics.store import open_run

__all__ = ["ConfigError", "DynamicsError", "NonFiniteLossError", "Recorder", "StoreError", "open_run"]
