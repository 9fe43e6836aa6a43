"""The Hugging Face libraries' own output kept out of the stored notebooks, in one place.

transformers, datasets and huggingface_hub draw progress bars with tqdm.auto, which in a
notebook kernel without ipywidgets first warns "IProgress not found" and then draws a text
bar anyway; loading a local folder draws a bar per group of tensors. Neither teaches
anything, and a stored notebook keeps every frame, so the course turns them off where it
calls those libraries and restores them after. Its own bars come from `progress`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

IPROGRESS = "IProgress not found"  # tqdm.auto's warning without ipywidgets


def ignore_iprogress() -> None:
    """Drop tqdm.auto's ipywidgets warning for the rest of the process."""
    warnings.filterwarnings("ignore", message=IPROGRESS)


@contextmanager
def no_transformers_bars() -> Iterator[None]:
    """transformers' progress bars off inside the block, as they were after it."""
    from transformers.utils import logging as tf_logging

    bars = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            tf_logging.enable_progress_bar()


@contextmanager
def logger_level(name: str, level: int) -> Iterator[None]:
    """The standard-library logger `name` at `level` inside the block, restored after."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
