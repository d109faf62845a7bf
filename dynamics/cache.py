"""Where the toolkit keeps what it makes once and reuses: generated data sets, decoded images, compiled kernels."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$DYNAMICS_CACHE`` if set, else ``~/.cache/dynamics``."""
    return Path(os.environ.get("DYNAMICS_CACHE") or Path.home() / ".cache" / "dynamics")
