"""Datasets: readers of the real corpora, offline stand-ins, and one entry from config.data to splits."""

import os
import pathlib


def default_cache_dir(name: str) -> pathlib.Path:
    """Where a stand-in corpus is cached: $ODYSSEY_CACHE/<name>, else ~/.cache/odyssey/<name>."""
    root = os.environ.get("ODYSSEY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "odyssey")
    return pathlib.Path(root) / name
