"""A parallel map with a progress bar, for the data-preparation scripts under ``datasets/``."""

from __future__ import annotations

import functools
import multiprocessing as mp
from typing import Callable, List, Sequence, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def _apply(function: Callable[..., T], task: Sequence) -> T:
    return function(*task)


def map_with_progress(
    function: Callable[..., T], tasks: Sequence[Sequence], workers: int, description: str
) -> List[T]:
    """``[function(*task) for task in tasks]`` in order, on ``workers`` processes, with a progress
    bar on stderr (files done, rate and the estimated time left)."""
    results: List[T] = []
    with tqdm(total=len(tasks), desc=description, unit="file", smoothing=0.05) as progress:
        if workers <= 1:
            for task in tasks:
                results.append(function(*task))
                progress.update()
            return results
        # Small chunks keep the bar and its estimate current; 16 files amortise the transfer.
        chunksize = max(1, min(16, len(tasks) // (4 * workers)))
        with mp.Pool(processes=workers) as pool:
            for result in pool.imap(functools.partial(_apply, function), tasks, chunksize):
                results.append(result)
                progress.update()
    return results
