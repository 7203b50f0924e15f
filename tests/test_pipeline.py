"""The grain input pipeline: determinism, checkpointable iterators, augmentation, normalisation."""

from __future__ import annotations

import functools
import itertools
import json
import os

import grain
import numpy as np
import pytest

from pcam_jax.data import pipeline, sources
from pcam_jax.data.pipeline import AugmentConfig


def _train_src(root):
    return sources.make_source("pcam_hdf5", root, "train")


def _indices(loader, n_batches):
    it = iter(loader)
    return [next(it)["index"].copy() for _ in range(n_batches)]


def test_shuffle_is_deterministic_per_seed_and_differs_per_epoch(synthetic_root):
    src = _train_src(synthetic_root)  # 192 patches: 6 batches of 32 per epoch
    a = _indices(pipeline.make_loader(src, batch_size=32, train=True, seed=7), 12)
    b = _indices(pipeline.make_loader(src, batch_size=32, train=True, seed=7), 12)
    c = _indices(pipeline.make_loader(src, batch_size=32, train=True, seed=8), 12)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert not all((x == y).all() for x, y in zip(a, c, strict=True))
    epoch0, epoch1 = np.concatenate(a[:6]), np.concatenate(a[6:])
    # each epoch is a permutation of all records, and the two epochs differ in order
    np.testing.assert_array_equal(np.sort(epoch0), np.arange(192))
    np.testing.assert_array_equal(np.sort(epoch1), np.arange(192))
    assert not (epoch0 == epoch1).all()
    assert not (epoch0 == np.arange(192)).all()


def test_eval_loader_yields_stored_pixels_in_order_with_remainder(synthetic_root):
    src = sources.make_source("pcam_hdf5", synthetic_root, "valid")  # 64 patches
    batches = list(pipeline.make_loader(src, batch_size=24, train=False))
    assert [len(b["label"]) for b in batches] == [24, 24, 16]
    images = np.concatenate([b["image"] for b in batches])
    assert images.dtype == np.uint8
    np.testing.assert_array_equal(images, src.read_images(0, 64))
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), src.labels)
    # the eval loader ignores augmentation, even when given
    aug = pipeline.make_loader(src, batch_size=64, train=False, augment=AugmentConfig(d4=True))
    np.testing.assert_array_equal(next(iter(aug))["image"], src.read_images(0, 64))


def test_normalize_uses_the_training_statistics(synthetic_root):
    src = _train_src(synthetic_root)
    stats = pipeline.compute_norm_stats(src, block=50)
    x = src.read_images(0, len(src)).astype(np.float64)
    np.testing.assert_allclose(stats.mean, x.mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(stats.std, x.std(axis=(0, 1, 2)), rtol=1e-6)
    batch = next(iter(pipeline.make_loader(src, batch_size=16, train=False)))
    out = pipeline.normalize(batch["image"], stats.mean, stats.std)
    assert out.dtype == np.float32
    expected = (src.read_images(0, 16) - np.array(stats.mean)) / np.array(stats.std)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    whole = pipeline.normalize(src.read_images(0, len(src)), stats.mean, stats.std)
    whole = whole.astype(np.float64)  # accumulate the check itself in float64
    np.testing.assert_allclose(whole.mean(axis=(0, 1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(whole.std(axis=(0, 1, 2)), 1, atol=1e-4)


def test_normalize_runs_under_jit(synthetic_root):
    import jax

    images = _train_src(synthetic_root).read_images(0, 4)
    mean, std = (200.0, 150.0, 210.0), (50.0, 40.0, 30.0)
    got = jax.jit(lambda x: pipeline.normalize(x, mean, std))(images)
    np.testing.assert_allclose(np.asarray(got), pipeline.normalize(images, mean, std), rtol=1e-6)


def test_norm_stats_cache_is_reused_and_recomputed_when_data_changes(synthetic_copy, monkeypatch):
    calls = []
    real = pipeline.compute_norm_stats
    monkeypatch.setattr(pipeline, "compute_norm_stats", lambda s: calls.append(1) or real(s))
    first = pipeline.dataset_norm_stats(_train_src(synthetic_copy))
    cache = synthetic_copy / ".pcam_jax_cache" / "norm_stats_pcam_hdf5_train.json"
    assert json.loads(cache.read_text())["mean"] == list(first.mean)
    second = pipeline.dataset_norm_stats(_train_src(synthetic_copy))
    assert second == first and len(calls) == 1
    # rewrite the training images: the fingerprint changes, the statistics are recomputed
    import h5py

    x_path = sources.split_paths(synthetic_copy, "train")[0]
    with h5py.File(x_path, "r+") as f:
        f["x"][:10] = 0
    os.utime(x_path, ns=(0, 1))
    third = pipeline.dataset_norm_stats(_train_src(synthetic_copy))
    assert len(calls) == 2 and third.mean[0] < first.mean[0]


def test_norm_stats_fall_back_to_user_cache_for_read_only_data(
    synthetic_copy, tmp_path, monkeypatch
):
    if os.geteuid() == 0:
        # root ignores directory permissions: make the cache location unusable instead
        (synthetic_copy / ".pcam_jax_cache").write_text("a file where the cache dir would go")
    else:
        synthetic_copy.chmod(0o555)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    stats = pipeline.dataset_norm_stats(_train_src(synthetic_copy))
    cached = list((tmp_path / "xdg" / "pcam_jax" / "norm_stats").glob("*_train.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["n"] == stats.n == 192
    synthetic_copy.chmod(0o755)


@pytest.mark.parametrize("workers", [0, 2])
def test_iterator_state_resumes_on_exactly_the_next_batch(synthetic_root, workers):
    src = _train_src(synthetic_root)

    def loader():
        return pipeline.make_loader(
            src,
            batch_size=32,
            train=True,
            seed=3,
            augment=AugmentConfig(d4=True, brightness=0.2, hed_sigma=0.05),
            worker_count=workers,
        )

    it = iter(loader())
    for _ in range(7):  # into the second epoch
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]
    resumed = iter(
        pipeline.make_loader(
            _train_src(synthetic_root),  # a new source object, as in a restarted process
            batch_size=32,
            train=True,
            seed=3,
            augment=AugmentConfig(d4=True, brightness=0.2, hed_sigma=0.05),
            worker_count=workers,
        )
    )
    resumed.set_state(state)
    got = [next(resumed) for _ in range(4)]
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(e["index"], g["index"])
        np.testing.assert_array_equal(e["image"], g["image"])  # augmentation replayed too
    # a fresh iterator without the state starts elsewhere (the check can fail)
    fresh = next(iter(loader()))
    assert not np.array_equal(fresh["index"], expected[0]["index"])


_LAYOUT_AUG = AugmentConfig(d4=True, contrast=0.2, hed_sigma=0.05)


def _layout_loader(src, processes, process, workers, global_batch=32):
    shard = grain.sharding.ShardOptions(
        shard_index=process, shard_count=processes, drop_remainder=True
    )
    return pipeline.make_loader(
        src,
        batch_size=global_batch // processes,
        train=True,
        seed=1,
        augment=_LAYOUT_AUG,
        worker_count=workers,
        shard_options=shard,
    )


_MOST_BATCHES = 8


@functools.cache
def _read_global_batches(root: str, processes: int, workers: int) -> list[dict[str, np.ndarray]]:
    """The first _MOST_BATCHES global batches of a layout, read once per module (grain workers
    are processes: each loader with workers starts them anew). For reading only."""
    src = _train_src(root)
    per_process = [
        list(itertools.islice(iter(_layout_loader(src, processes, p, workers)), _MOST_BATCHES))
        for p in range(processes)
    ]
    return [
        {k: np.concatenate([pp[b][k] for pp in per_process]) for k in ("index", "image")}
        for b in range(_MOST_BATCHES)
    ]


def _global_batches(src, processes, workers, n):
    """Batch k of every process, concatenated in process order: the global batch k, for k < n."""
    assert n <= _MOST_BATCHES
    return _read_global_batches(str(src.root), processes, workers)[:n]


@pytest.mark.parametrize("processes,workers", [(2, 0), (1, 2), (2, 2)])
def test_global_batches_do_not_depend_on_processes_or_workers(synthetic_root, processes, workers):
    # 192 patches, global batch 32: 8 batches cross into the second epoch.
    src = _train_src(synthetic_root)
    reference = _global_batches(src, 1, 0, 8)
    got = _global_batches(src, processes, workers, 8)
    for r, g in zip(reference, got, strict=True):
        np.testing.assert_array_equal(r["index"], g["index"])  # same records, same order
        np.testing.assert_array_equal(r["image"], g["image"])  # augmented identically
    first_epoch = np.concatenate([b["index"] for b in reference[:6]])
    assert sorted(first_epoch.tolist()) == list(range(192))  # each record once per epoch


@pytest.mark.parametrize("processes,workers", [(1, 0), (2, 0), (2, 2)])
def test_train_iterator_state_is_grains_state_and_resumes_any_layout(
    synthetic_root, processes, workers
):
    src = _train_src(synthetic_root)
    for p in range(processes):
        it = iter(_layout_loader(src, processes, p, workers))
        for _ in range(5):
            next(it)
        built = pipeline.train_iterator_state(_layout_loader(src, processes, p, workers), 5)
        assert json.loads(built) == json.loads(it.get_state())
    # a run of this layout that stopped after 5 batches resumes on one process, no workers
    one = _layout_loader(src, 1, 0, 0)
    resumed = iter(one)
    resumed.set_state(pipeline.train_iterator_state(one, 5))
    expected = _global_batches(src, processes, workers, 7)[5:]
    for e in expected:
        g = next(resumed)
        np.testing.assert_array_equal(e["index"], g["index"])
        np.testing.assert_array_equal(e["image"], g["image"])
    # the control: the state of another step resumes elsewhere
    other = iter(one)
    other.set_state(pipeline.train_iterator_state(one, 4))
    assert not np.array_equal(next(other)["index"], expected[0]["index"])


def test_d4_permutation_table_matches_rot90_and_flip():
    image = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    perms = pipeline.d4_pixel_permutations()
    seen = set()
    for k, flip in itertools.product(range(4), (False, True)):
        reference = np.rot90(image, k, axes=(0, 1))
        reference = reference[:, ::-1] if flip else reference
        got = image.ravel()[perms[2 * k + flip]].reshape(image.shape)
        np.testing.assert_array_equal(got, reference)
        seen.add(got.tobytes())
        # an exact permutation: every pixel (RGB triple) kept, none invented
        assert sorted(map(tuple, got.reshape(-1, 3))) == sorted(map(tuple, image.reshape(-1, 3)))
    assert len(seen) == 8  # the 8 elements of D4 are distinct


def test_d4_augmentation_is_an_exact_pixel_permutation_and_uses_all_8(synthetic_root):
    src = _train_src(synthetic_root)
    loader = pipeline.make_loader(
        src, batch_size=64, train=True, seed=0, augment=AugmentConfig(d4=True)
    )
    used = set()
    for batch in itertools.islice(iter(loader), 3):
        for image, index in zip(batch["image"], batch["index"], strict=True):
            stored = src.read_image(int(index))
            matches = [
                2 * k + f
                for k in range(4)
                for f in (0, 1)
                if np.array_equal(image, pipeline.d4_transform(stored, k, bool(f)))
            ]
            assert matches, f"patch {index} is not a D4 transform of the stored pixels"
            used.add(matches[0])
    assert used == set(range(8))


def test_photometric_augmentation_changes_pixels_within_range(synthetic_root):
    src = _train_src(synthetic_root)
    aug = AugmentConfig(
        rotate_degrees=10, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, hed_sigma=0.1
    )
    batch = next(iter(pipeline.make_loader(src, batch_size=32, train=True, seed=0, augment=aug)))
    stored = np.stack([src.read_image(int(i)) for i in batch["index"]])
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == stored.shape
    diff = np.abs(batch["image"].astype(int) - stored)
    assert diff.mean() > 2  # changed ...
    assert diff.mean() < 60  # ... but still the same tissue


def test_hed_jitter_identity_and_stain_effect():
    x = np.random.default_rng(0).uniform(0, 255, (96, 96, 3)).astype(np.float32)
    same = pipeline.hed_jitter(x, np.ones(3, np.float32), np.zeros(3, np.float32))
    np.testing.assert_allclose(same, x, atol=1e-2)
    more_haematoxylin = pipeline.hed_jitter(x, np.array([1.5, 1, 1], np.float32), np.zeros(3))
    assert more_haematoxylin.mean() < x.mean()  # more stain absorbs more light


def test_augment_config_rejects_unknown_fields():
    assert AugmentConfig.from_mapping({"d4": True}) == AugmentConfig(d4=True)
    with pytest.raises(ValueError, match=r"unknown augment field\(s\) \['rot90'\]"):
        AugmentConfig.from_mapping({"rot90": True})


@pytest.mark.parametrize("processes", [2, 3])
def test_eval_shards_are_contiguous_and_keep_every_record(synthetic_root, processes):
    src = sources.make_source("pcam_hdf5", synthetic_root, "valid")  # 64 patches
    parts = []
    for index in range(processes):
        shard = grain.sharding.ShardOptions(
            shard_index=index, shard_count=processes, drop_remainder=True
        )
        loader = pipeline.make_loader(src, batch_size=8, train=False, shard_options=shard)
        parts.append(np.concatenate([b["index"] for b in loader]))
    # 64 = 32 + 32 or 22 + 21 + 21: nothing dropped, in order, no overlap
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(64))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert isinstance(pipeline.process_shard_options(), grain.sharding.ShardByJaxProcess)


def test_too_small_for_a_training_batch(synthetic_root):
    src = sources.make_source("pcam_hdf5", synthetic_root, "valid")
    with pytest.raises(ValueError, match=r"holds 64 patches, fewer than one training batch of 65"):
        pipeline.make_loader(src, batch_size=65, train=True)
