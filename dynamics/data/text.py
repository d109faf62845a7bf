"""A character-level language-modelling corpus: Python's own reference documentation by default, any file by path.

The default text is ``pydoc_data.topics``, the Python Language Reference's topics as plain text (about
465,000 characters on CPython 3.11), which ships with every CPython install: it works offline and is
fixed for a given Python version (the corpus differs slightly between Python versions). Topics are joined
in sorted order. Any UTF-8 text file can be used instead.

The first 90% of the characters are the training text and the last 10% the test text (no window spans
both). Each is cut into non-overlapping windows of ``seq_len + 1`` characters; a sample is the first
``seq_len`` characters and its target the same window shifted by one (next-character prediction). The
vocabulary is every character of the corpus, sorted.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from dynamics.data.base import Dataset
from dynamics.errors import ConfigError

TEST_FRACTION = 0.1


def default_corpus() -> str:
    """The Python Language Reference topics shipped in the standard library (``pydoc_data.topics``)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def _windows(ids: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    count = max(0, (len(ids) - 1) // seq_len)  # an empty text has no window
    starts = torch.arange(count)[:, None] * seq_len + torch.arange(seq_len + 1)[None, :]
    windows = ids[starts]
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def load_text(path: str | os.PathLike[str] | None = None, *, seq_len: int = 128) -> Dataset:
    """Next-character windows of the text at ``path`` (default: :func:`default_corpus`), int64 ``(N, seq_len)``."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ConfigError(f"text seq_len must be an int >= 2, got {seq_len!r}; fix it", key="seq_len")
    if path is None:
        text = default_corpus()
    else:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"text: no file at path={file}; point it to a UTF-8 text file", key="path")
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or err
            raise ConfigError(
                f"text: {file} is not a readable UTF-8 text file ({reason}); convert it to UTF-8", key="path"
            ) from None
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    points, inverse = np.unique(codes, return_inverse=True)
    vocabulary = [chr(point) for point in points]
    ids = torch.from_numpy(inverse.astype(np.int64))
    split = int(len(ids) * (1 - TEST_FRACTION))
    x_train, y_train = _windows(ids[:split], seq_len)
    x_test, y_test = _windows(ids[split:], seq_len)
    if len(x_train) < 2 or len(x_test) < 1:
        source = "" if path is None else f" of path={Path(path).expanduser()}"
        raise ConfigError(
            f"text: the {len(text)} characters{source} are too few for windows of {seq_len + 1} "
            "(at least 2 to train and 1 to test); use a longer text or a smaller seq_len",
            key=("seq_len", "path") if path is not None else "seq_len",
        )
    return Dataset(
        "text", x_train, y_train, x_test, y_test, num_classes=len(vocabulary), kind="sequence", labels=tuple(vocabulary)
    )
