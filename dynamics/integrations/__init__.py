"""Recorder callbacks for training frameworks: ``dynamics.integrations.lightning`` (PyTorch Lightning) and
``dynamics.integrations.hf`` (Hugging Face ``transformers.Trainer``).

Each module imports its framework when it is imported (``pip install 'dynamics[lightning]'`` /
``'dynamics[hf]'``); this package and the core of ``dynamics`` never import either.
"""
