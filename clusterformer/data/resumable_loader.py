"""A training data loader whose batches depend only on (seed, iteration): resumable and reproducible.

Detectron2's training loader restarts its infinite index stream from the beginning on
``--resume``, groups by aspect ratio with state that is lost, and seeds each worker's
augmentation RNG from the process's RNG, so a resumed run sees other images and other
augmentations than the uninterrupted one. Here:

* **Index stream.** One global stream ``s[0], s[1], ...``: the data set shuffled once per epoch,
  epoch ``e`` by ``randperm(N, seed=derive_seed(seed, e))`` (random access: no replay needed).
* **Batches.** Rank ``r`` of ``W`` takes, for iteration ``i`` with ``b`` images per rank, the
  global positions ``(i * b + j) * W + r``, ``j < b`` (Detectron2's ``rank::W`` slicing), so the
  ``W`` ranks together take positions ``[i * b * W, (i + 1) * b * W)``: the same images as one
  process with the same total batch. With aspect-ratio grouping, batches are formed from that
  rank's stream by two buckets (width > height or not), in the main process, from the data set
  dicts' ``width`` / ``height``; resuming replays this grouping on indices only (cheap).
* **Augmentation.** The sample at global position ``p`` is mapped with the Python, NumPy and torch
  RNGs seeded by ``derive_seed(seed, p)`` (and restored afterwards), so its augmentation is the
  same whatever the iteration it is resumed at, the number of workers or the number of ranks.
* **Resuming.** :meth:`ResumableTrainLoader.reset` (called by the trainer after loading a
  checkpoint, before the first batch) starts the stream at a given iteration.
* **Broken samples** (``skip_broken_samples``): an image or annotation that cannot be read
  (``OSError``: missing, truncated, not an image; ``SizeMismatchError``) either stops training with
  the mapper's error naming the file (default) or is replaced, with a warning, by another sample
  chosen deterministically from (seed, position, attempt): Detectron2's ``MapDataset`` retry
  idea, but reproducible. A mapper returning ``None`` is treated the same way.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import logging
import random
import signal
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data.common import DatasetFromList
from detectron2.data.detection_utils import SizeMismatchError
from torch.utils.data import DataLoader, Dataset, Sampler

logger = logging.getLogger(__name__)

# What counts as a broken sample (not a bug): a file that cannot be read or does not match.
BROKEN_SAMPLE_ERRORS = (OSError, SizeMismatchError)
# Replacements tried for one position before giving up (the data set is then mostly broken).
MAX_REPLACEMENTS = 20

Position = Tuple[int, int]  # (global stream position, data set index)


def derive_seed(*parts: Any) -> int:
    """A 32-bit seed from any parts (ints, strings), the same on every machine and Python."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's global RNGs with ``seed``; restore them on exit, so
    that code around (the model's RNG use, with ``num_workers=0``) is not affected."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def seed_all_rngs(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class ShuffledStream:
    """The infinite global index stream: epoch ``e`` is a permutation seeded by ``(seed, e)``."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        if size <= 0:
            raise ValueError(f"Cannot sample from an empty training set (size {size})")
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self._epoch = -1
        self._order: List[int] = []

    def __getitem__(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if not self.shuffle:
            return offset
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._order = torch.randperm(self.size, generator=generator).tolist()
            self._epoch = epoch
        return self._order[offset]


class ResumableBatchSampler(Sampler):
    """Yields, for iterations ``start, start + 1, ...``, this rank's batch as a list of
    ``(global position, data set index)`` (see the module docstring for the layout).

    Args:
        stream: the global index stream.
        batch_size: images per rank and iteration.
        rank, world_size: this process among the training processes.
        aspect_groups: per data set index, 0 (width > height) or 1; None disables grouping.
    """

    def __init__(
        self,
        stream: ShuffledStream,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        aspect_groups: Optional[Sequence[int]] = None,
    ):
        if batch_size <= 0:
            raise ValueError(f"Batch size per process must be positive, got {batch_size}")
        self.stream = stream
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.aspect_groups = aspect_groups
        self.start_iteration = 0

    def _global_position(self, local_position: int) -> int:
        return local_position * self.world_size + self.rank

    def _entry(self, local_position: int) -> Position:
        position = self._global_position(local_position)
        return position, self.stream[position]

    def batch(self, iteration: int) -> List[Position]:
        """This rank's batch of ``iteration`` without grouping (random access)."""
        first = iteration * self.batch_size
        return [self._entry(first + j) for j in range(self.batch_size)]

    def _grouped_batches(self) -> Iterator[List[Position]]:
        buckets: Tuple[List[Position], List[Position]] = ([], [])
        for local_position in itertools.count():
            entry = self._entry(local_position)
            bucket = buckets[self.aspect_groups[entry[1]]]
            bucket.append(entry)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()

    def __iter__(self) -> Iterator[List[Position]]:
        if self.aspect_groups is None:
            for iteration in itertools.count(self.start_iteration):
                yield self.batch(iteration)
        else:
            # Replays the grouping on indices only, so the buckets are what they were.
            yield from itertools.islice(self._grouped_batches(), self.start_iteration, None)


class SeededMapDataset(Dataset):
    """``dataset[(position, index)] = mapper(dicts[index])`` with the RNGs seeded by
    ``(seed, position)``; broken samples raise or are replaced (module docstring)."""

    def __init__(
        self,
        dataset_dicts: Sequence[Dict[str, Any]],
        mapper: Callable[[Dict[str, Any]], Optional[Dict[str, Any]]],
        seed: int,
        skip_broken_samples: bool = False,
    ):
        self.dataset = DatasetFromList(list(dataset_dicts), copy=False, serialize=True)
        self.mapper = mapper
        self.seed = seed
        self.skip_broken_samples = skip_broken_samples

    def __len__(self) -> int:
        return len(self.dataset)

    def _replacement(self, position: int, attempt: int) -> int:
        return derive_seed(self.seed, "replace", position, attempt) % len(self.dataset)

    def __getitem__(self, entry: Position) -> Dict[str, Any]:
        position, index = entry
        problems = []
        for attempt in range(MAX_REPLACEMENTS + 1):
            record = self.dataset[index]
            with seeded_rngs(derive_seed(self.seed, "sample", position, attempt)):
                try:
                    mapped = self.mapper(record)
                except BROKEN_SAMPLE_ERRORS as error:
                    if not self.skip_broken_samples:
                        raise
                    mapped, problem = None, f"{type(error).__name__}: {error}"
                else:
                    problem = "the mapper returned None"
            if mapped is not None:
                return mapped
            if not self.skip_broken_samples:
                raise ValueError(
                    f"The dataset mapper returned None for {record.get('file_name')!r}; set "
                    "DATALOADER.SKIP_BROKEN_SAMPLES True to replace such samples"
                )
            problems.append(problem)
            logger.warning(
                "Skipping training sample %r (data set index %d) and using another one "
                "(DATALOADER.SKIP_BROKEN_SAMPLES): %s",
                record.get("file_name"),
                index,
                problem,
            )
            index = self._replacement(position, attempt)
        raise RuntimeError(
            f"{MAX_REPLACEMENTS + 1} training samples in a row could not be read; the data set "
            f"looks broken. Last problems: {problems[-3:]}"
        )


def _collate_list(batch: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return batch


def _worker_init(worker_id: int) -> None:
    # A SIGTERM sent to every process of the job (as cluster schedulers do) must not kill the
    # workers while the main process finishes its iteration and saves a checkpoint: torch would
    # then abort that iteration. The workers stop when the loader is closed (ResumableTrainLoader
    # .close, which kills them if they do not stop by themselves) or when the main process dies.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _close_at_exit(loader_reference: weakref.ref[ResumableTrainLoader]) -> None:
    loader = loader_reference()
    if loader is not None:
        loader.close()


class ResumableTrainLoader:
    """Iterable of training batches (lists of mapped dicts); see the module docstring.

    Args:
        dataset_dicts: the training set.
        mapper: data set dict -> model input.
        batch_size: images per rank and iteration.
        seed: the run's seed (index stream, augmentation).
        rank, world_size: this process among the training processes.
        num_workers: DataLoader worker processes (batches do not depend on it).
        aspect_ratio_grouping: group images with width > height apart from the others; needs
            ``width`` and ``height`` in every dict (otherwise grouping is off, with a warning).
        skip_broken_samples: replace unreadable samples instead of raising.
        shuffle: shuffle each epoch.
    """

    def __init__(
        self,
        dataset_dicts: Sequence[Dict[str, Any]],
        mapper: Callable[[Dict[str, Any]], Optional[Dict[str, Any]]],
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        aspect_ratio_grouping: bool = False,
        skip_broken_samples: bool = False,
        shuffle: bool = True,
    ):
        aspect_groups = None
        if aspect_ratio_grouping:
            if all("width" in d and "height" in d for d in dataset_dicts):
                aspect_groups = [0 if d["width"] > d["height"] else 1 for d in dataset_dicts]
            else:
                logger.warning(
                    "DATALOADER.ASPECT_RATIO_GROUPING is on, but the data set dicts have no "
                    "width/height; batches are not grouped by aspect ratio"
                )
        self.dataset = SeededMapDataset(dataset_dicts, mapper, seed, skip_broken_samples)
        self.batch_sampler = ResumableBatchSampler(
            ShuffledStream(len(dataset_dicts), seed, shuffle),
            batch_size,
            rank=rank,
            world_size=world_size,
            aspect_groups=aspect_groups,
        )
        self.num_workers = num_workers
        self._started = False
        self._iterator = None
        # Before multiprocessing's own exit handler, which would SIGTERM (ignored) and wait.
        atexit.register(_close_at_exit, weakref.ref(self))

    @property
    def seed(self) -> int:
        return self.dataset.seed

    @property
    def start_iteration(self) -> int:
        return self.batch_sampler.start_iteration

    def reset(self, start_iteration: int, seed: Optional[int] = None) -> None:
        """Start at ``start_iteration`` (with ``seed`` when given); only before iterating."""
        if self._started:
            raise RuntimeError("ResumableTrainLoader.reset() must be called before iterating")
        self.batch_sampler.start_iteration = int(start_iteration)
        if seed is not None:
            self.dataset.seed = int(seed)
            self.batch_sampler.stream = ShuffledStream(
                self.batch_sampler.stream.size, int(seed), self.batch_sampler.stream.shuffle
            )

    def __iter__(self) -> Iterator[List[Dict[str, Any]]]:
        self._started = True
        loader = DataLoader(
            self.dataset,
            batch_sampler=self.batch_sampler,
            num_workers=self.num_workers,
            collate_fn=_collate_list,
            worker_init_fn=_worker_init if self.num_workers > 0 else None,
            # The iterator draws its base seed from this generator, not from the global RNG:
            # the iterator is created at the first batch, i.e. in the first iteration of a run
            # (0, or the resumed one), after IterationSeed has seeded the model's draws.
            generator=torch.Generator().manual_seed(derive_seed(self.dataset.seed, "loader")),
        )
        self._iterator = iter(loader)
        return self._iterator

    def close(self) -> None:
        """Stop the worker processes (they ignore SIGTERM, see ``_worker_init``): ask them to
        finish, then kill those still running. Safe to call more than once."""
        iterator, self._iterator = self._iterator, None
        workers = getattr(iterator, "_workers", [])
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            with contextlib.suppress(Exception):
                shutdown()
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=5)
