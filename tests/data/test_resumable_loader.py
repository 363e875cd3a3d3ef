"""The resumable training loader: batches and augmentations depend only on (seed, iteration)."""

from __future__ import annotations

import itertools
import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image

from clusterformer.d2.config_files import load_config
from clusterformer.data.resumable_loader import (
    ResumableBatchSampler,
    ResumableTrainLoader,
    SeededMapDataset,
    ShuffledStream,
)
from clusterformer.engine import Trainer


def records(count=10, wide=()):
    return [
        {
            "file_name": f"{i}.png",
            "image_id": i,
            "width": 20 if i in wide else 10,
            "height": 10 + (i not in wide),
        }
        for i in range(count)
    ]


def random_mapper(record):
    """Draws from all three RNGs, like augmentations do; fails on 'broken' records."""
    if record.get("broken"):
        raise OSError(f"Cannot read the image file {record['file_name']!r} (injected)")
    return {
        "image_id": record["image_id"],
        "draws": (np.random.rand(), float(torch.rand(())), random.random()),
    }


def take(loader, count):
    return list(itertools.islice(iter(loader), count))


def test_stream_is_a_permutation_per_epoch_and_random_access():
    stream = ShuffledStream(7, seed=3)
    first_epochs = [stream[p] for p in range(21)]
    for epoch in range(3):
        assert sorted(first_epochs[7 * epoch : 7 * epoch + 7]) == list(range(7))
    assert first_epochs[:7] != first_epochs[7:14]  # reshuffled
    fresh = ShuffledStream(7, seed=3)
    assert [fresh[p] for p in (15, 2, 20)] == [first_epochs[15], first_epochs[2], first_epochs[20]]
    assert [ShuffledStream(7, seed=4)[p] for p in range(7)] != first_epochs[:7]


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_together_take_the_single_process_batch(world_size):
    stream = ShuffledStream(13, seed=0)
    single = ResumableBatchSampler(stream, batch_size=8)
    per_rank = [
        ResumableBatchSampler(stream, batch_size=8 // world_size, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    for iteration in range(6):
        union = sorted(entry for sampler in per_rank for entry in sampler.batch(iteration))
        assert union == sorted(single.batch(iteration))


@pytest.mark.parametrize("grouping", [False, True])
def test_sampler_resumes_exactly_where_it_stopped(grouping):
    data = records(11, wide={1, 4, 5, 9})
    groups = [0 if d["width"] > d["height"] else 1 for d in data] if grouping else None
    full = ResumableBatchSampler(ShuffledStream(11, seed=1), 4, aspect_groups=groups)
    expected = list(itertools.islice(iter(full), 9))
    resumed = ResumableBatchSampler(ShuffledStream(11, seed=1), 4, aspect_groups=groups)
    resumed.start_iteration = 5
    assert list(itertools.islice(iter(resumed), 4)) == expected[5:]
    if grouping:
        for batch in expected:
            assert len({groups[index] for _, index in batch}) == 1


@pytest.mark.parametrize("num_workers", [0, 2])
def test_samples_are_augmented_by_position_whatever_the_workers(num_workers):
    common = {"batch_size": 3, "seed": 5}
    reference = take(ResumableTrainLoader(records(), random_mapper, num_workers=0, **common), 6)
    loader = ResumableTrainLoader(records(), random_mapper, num_workers=num_workers, **common)
    loader.reset(start_iteration=2)
    resumed = take(loader, 4)
    loader.close()
    assert resumed == reference[2:]
    # Not a constant: samples differ from one another, and another seed gives other draws.
    draws = [sample["draws"] for batch in reference for sample in batch]
    assert len(set(draws)) == len(draws)
    other = take(ResumableTrainLoader(records(), random_mapper, batch_size=3, seed=6), 1)
    assert other[0] != reference[0]


def test_two_ranks_see_the_samples_and_augmentations_of_one_process():
    single = take(ResumableTrainLoader(records(), random_mapper, batch_size=4, seed=2), 5)
    ranks = [
        take(
            ResumableTrainLoader(
                records(), random_mapper, batch_size=2, seed=2, rank=r, world_size=2
            ),
            5,
        )
        for r in range(2)
    ]
    for iteration in range(5):
        together = ranks[0][iteration] + ranks[1][iteration]
        key = lambda sample: sample["draws"]  # noqa: E731
        assert sorted(together, key=key) == sorted(single[iteration], key=key)


def test_mapping_does_not_disturb_the_callers_rngs():
    def seed_and_draw(between=None):
        random.seed(123)
        np.random.seed(123)
        torch.manual_seed(123)
        if between is not None:
            between()
        return float(torch.rand(())), np.random.rand(), random.random()

    dataset = SeededMapDataset(records(), random_mapper, seed=0)
    assert seed_and_draw(lambda: dataset[(0, 3)]) == seed_and_draw()


def test_broken_samples_raise_unless_skipping_is_on(caplog):
    data = records()
    data[4]["broken"] = True
    strict = SeededMapDataset(data, random_mapper, seed=0)
    with pytest.raises(OSError, match=r"4\.png"):
        strict[(17, 4)]
    lenient = SeededMapDataset(data, random_mapper, seed=0, skip_broken_samples=True)
    with caplog.at_level(logging.WARNING, logger="clusterformer.data.resumable_loader"):
        replacement = lenient[(17, 4)]
    assert replacement["image_id"] != 4
    assert "Skipping training sample '4.png'" in caplog.text and "injected" in caplog.text
    assert lenient[(17, 4)] == replacement  # the replacement is deterministic

    all_broken = [dict(r, broken=True) for r in records(3)]
    with pytest.raises(RuntimeError, match="could not be read"):
        SeededMapDataset(all_broken, random_mapper, seed=0, skip_broken_samples=True)[(0, 0)]
    none_mapper = SeededMapDataset(records(2), lambda record: None, seed=0)
    with pytest.raises(ValueError, match="returned None.*SKIP_BROKEN_SAMPLES"):
        none_mapper[(0, 0)]


def test_trainer_loader_skips_an_unreadable_image_of_the_training_set(tmp_path):
    """Through Trainer.build_train_loader with DATALOADER.SKIP_BROKEN_SAMPLES: a truncated file in
    a class-folder data set is replaced, the batches keep their size."""
    from clusterformer.data.datasets.class_folder import register_class_folder

    root = tmp_path / "classes"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((12, 12, 3), 40 * i, np.uint8)).save(root / label / f"{i}.png")
    data = (root / "a" / "1.png").read_bytes()
    (root / "a" / "1.png").write_bytes(data[: len(data) // 2])
    name = f"reliability_broken_{tmp_path.name}"
    register_class_folder(name, str(root))
    overrides = [
        "DATASETS.TRAIN",
        f"('{name}',)",
        "SOLVER.IMS_PER_BATCH",
        "6",
        "DATALOADER.NUM_WORKERS",
        "0",
        "SEED",
        "1",
    ]
    overrides += ["INPUT.CLASSIFICATION.TRAIN_CROP", "8"]
    cfg = load_config("configs/shapes/classification/clusterformer_nano.yaml", overrides)
    with pytest.raises(OSError, match=r"1\.png"):
        take(Trainer.build_train_loader(cfg), 2)
    cfg.DATALOADER.SKIP_BROKEN_SAMPLES = True
    batches = take(Trainer.build_train_loader(cfg), 2)
    assert [len(b) for b in batches] == [6, 6]
    assert all(sample["image"].shape == (3, 8, 8) for batch in batches for sample in batch)


def test_a_drawn_seed_is_saved_and_restored_on_resume(tmp_path):
    """SEED -1 draws a seed; --resume continues with the checkpoint's seed, not a new draw."""
    overrides = ["SEED", "-1", "OUTPUT_DIR", str(tmp_path), "DATALOADER.NUM_WORKERS", "0"]
    first = Trainer(load_config("configs/shapes/classification/clusterformer_nano.yaml", overrides))
    first.iter = 4  # as after iteration 4
    first.checkpointer.save("model_0000004", iteration=4)
    second = Trainer(
        load_config("configs/shapes/classification/clusterformer_nano.yaml", overrides)
    )
    assert second.seed != first.seed  # (a 1 in 2**31 chance of a false failure)
    second.resume_or_load(resume=True)
    loader = second._trainer.data_loader
    assert second.start_iter == 5 and second.seed == first.seed
    assert (loader.seed, loader.start_iteration) == (first.seed, 5)
    assert loader.batch_sampler.batch(5) == first._trainer.data_loader.batch_sampler.batch(5)
