"""Input pipeline: determinism, resume, per-process shares, eval coverage, sources and errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from igc_jax import configs, data
from igc_jax.data import sources
from igc_jax.data.normalization import NORMALIZATION, normalize

CIFAR10_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
N_TRAIN, N_TEST = 61, 23      # neither divides the batch sizes used below


def _write_arrays(directory: Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> None:
    """Random 32×32×3 images; label = index, so every example is identifiable (num_classes = n)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_train + n_test, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n_train + n_test)
    np.savez(directory / "train-00.npz", image=images[:40], label=labels[:40])
    np.savez(directory / "train-01.npz", image=images[40:n_train], label=labels[40:n_train])
    np.savez(directory / "test.npz", image=images[n_train:], label=labels[n_train:])


@pytest.fixture(scope="module")
def arrays_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("arrays")
    _write_arrays(directory)
    return directory


def _config(directory: Path, batch_size: int = 8, eval_batch_size: int = 12, seed: int = 0):
    c = configs.base_config()
    c.seed = seed
    c.dataset.name = "arrays"
    c.dataset.data_dir = str(directory)
    c.dataset.num_classes = N_TRAIN + N_TEST
    c.batch_size, c.eval_batch_size = batch_size, eval_batch_size
    return c


def _take(it, n: int) -> list[dict]:
    return [next(it) for _ in range(n)]


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x) and len(a) == len(b)


def test_dataset_info_reads_headers_only(arrays_dir):
    info = data.dataset_info(_config(arrays_dir).dataset)
    assert info == data.DatasetInfo("arrays", N_TRAIN + N_TEST, (32, 32, 3), N_TRAIN, N_TEST)


def test_same_seed_same_batches_and_seed_matters(arrays_dir):
    run = lambda seed: _take(data.train_iterator(_config(arrays_dir, seed=seed), process_index=0,
                                                 process_count=1), 4)
    first, again, other = run(0), run(0), run(1)
    assert _same(first, again)
    assert not np.array_equal(first[0]["label"], other[0]["label"])
    assert first[0]["image"].dtype == np.float32 and first[0]["label"].dtype == np.int32
    assert first[0]["image"].shape == (8, 32, 32, 3)


def test_resume_at_step_k_sees_the_uninterrupted_batches(arrays_dir):
    config = _config(arrays_dir)
    it = data.train_iterator(config, process_index=0, process_count=1)
    assert it.steps_per_epoch == N_TRAIN // 8
    uninterrupted = _take(it, 17)                  # crosses two epoch boundaries (7 steps each)
    interrupted = data.train_iterator(config, process_index=0, process_count=1)
    _take(interrupted, 5)
    state = json.loads(json.dumps(interrupted.get_state()))
    assert state == {"step": 5}
    resumed = data.train_iterator(config, process_index=0, process_count=1)
    resumed.set_state(state)
    assert _same(_take(resumed, 12), uninterrupted[5:])
    resumed.set_state({"step": 0})                 # rewinding works on a used iterator too
    assert _same(_take(resumed, 2), uninterrupted[:2])
    with pytest.raises(ValueError, match="step"):
        resumed.set_state({"step": -1})


def test_each_epoch_is_a_new_permutation_without_the_remainder(arrays_dir):
    it = data.train_iterator(_config(arrays_dir), process_index=0, process_count=1)
    spe = it.steps_per_epoch
    epochs = [np.concatenate([b["label"] for b in _take(it, spe)]) for _ in range(2)]
    for labels in epochs:
        assert len(set(labels.tolist())) == spe * 8      # no repeats within an epoch
        assert set(labels.tolist()) <= set(range(N_TRAIN))
    assert not np.array_equal(epochs[0], epochs[1])


def test_two_processes_read_disjoint_shares_that_cover_the_global_batch(arrays_dir):
    config = _config(arrays_dir)
    single = data.train_iterator(config, process_index=0, process_count=1)
    shares = [data.train_iterator(config, process_index=p, process_count=2) for p in (0, 1)]
    seen = []
    for _ in range(single.steps_per_epoch):
        whole = next(single)
        a, b = next(shares[0]), next(shares[1])
        assert a["label"].shape == (4,) and b["label"].shape == (4,)
        assert not set(a["label"].tolist()) & set(b["label"].tolist())
        # The global batch (and its augmentation) does not depend on the process count.
        assert np.array_equal(np.concatenate([a["label"], b["label"]]), whole["label"])
        assert np.array_equal(np.concatenate([a["image"], b["image"]]), whole["image"])
        seen += whole["label"].tolist()
    assert len(set(seen)) == (N_TRAIN // 8) * 8


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_counts_every_example_exactly_once(arrays_dir, process_count):
    config = _config(arrays_dir, eval_batch_size=12)         # 23 examples: 2 batches, 1 padded
    per_process = [list(data.eval_batches(config, process_index=p, process_count=process_count))
                   for p in range(process_count)]
    assert len({len(batches) for batches in per_process}) == 1   # same number everywhere
    assert len(per_process[0]) == 2
    labels = [b["label"][b["mask"] == 1] for batches in per_process for b in batches]
    assert sorted(np.concatenate(labels).tolist()) == list(range(N_TRAIN, N_TRAIN + N_TEST))
    assert sum(b["mask"].sum() for batches in per_process for b in batches) == N_TEST
    for batches in per_process:
        assert all(b["image"].shape == (12 // process_count, 32, 32, 3) for b in batches)


def test_eval_images_are_the_normalised_stored_images(arrays_dir):
    config = _config(arrays_dir, eval_batch_size=N_TEST)
    batch = next(data.eval_batches(config, process_index=0, process_count=1))
    stored = np.load(arrays_dir / "test.npz")["image"]
    assert np.array_equal(batch["image"], normalize(stored, "cifar10"))
    again = next(data.eval_batches(config, process_index=0, process_count=1))
    assert np.array_equal(batch["image"], again["image"])


def test_worker_processes_give_the_same_batches(arrays_dir):
    config = _config(arrays_dir)
    threads = _take(data.train_iterator(config, process_index=0, process_count=1), 3)
    config.dataset.num_workers = 1
    workers = _take(data.train_iterator(config, process_index=0, process_count=1), 3)
    assert _same(threads, workers)


def test_digits_split_and_normalisation_constants():
    c = configs.base_config()
    c.dataset.update(name="digits", image_size=8, normalization="digits", augment="none")
    c.batch_size, c.eval_batch_size = 64, 100
    info = data.dataset_info(c.dataset)
    assert info == data.DatasetInfo("digits", 10, (8, 8, 1), 1347, 450)
    # The documented constants are the train split's statistics: normalised, mean 0 and std 1.
    images = np.concatenate([b["image"][b["mask"] == 1] for b in data.eval_batches(
        c, process_index=0, process_count=1, split="train")])
    assert images.shape == (1347, 8, 8, 1)
    assert abs(images.mean()) < 1e-3 and abs(images.std() - 1) < 1e-3
    test_labels = np.concatenate([b["label"][b["mask"] == 1] for b in data.eval_batches(
        c, process_index=0, process_count=1)])
    assert np.array_equal(test_labels, sources.load_digits("test")[1])
    assert np.bincount(test_labels).min() >= 40      # every class in the test split


def test_global_array_on_an_8_device_mesh():
    """Two simulated processes' shares concatenate to the batch that becomes one jax.Array."""
    script = textwrap.dedent("""
        import json, numpy as np, jax
        from igc_jax import configs, data
        from igc_jax.training import sharding
        c = configs.base_config()
        c.dataset.update(name="digits", image_size=8, normalization="digits", augment="none")
        c.batch_size = 32
        whole = next(data.train_iterator(c, process_index=0, process_count=1))
        shares = [next(data.train_iterator(c, process_index=p, process_count=2)) for p in (0, 1)]
        local = {k: np.concatenate([s[k] for s in shares]) for k in whole}
        mesh = sharding.make_mesh()
        g = sharding.global_batch(local, mesh)
        shards = sorted(g["image"].addressable_shards, key=lambda s: s.index[0].start)
        print(json.dumps({
            "devices": jax.device_count(),
            "same_as_single_process": all(np.array_equal(local[k], whole[k]) for k in whole),
            "shape": list(g["image"].shape), "label_shape": list(g["label"].shape),
            "sharding_ok": g["image"].sharding == sharding.batch_sharding(mesh),
            "shard_rows": [s.data.shape[0] for s in shards],
            "shards_in_order": all(np.array_equal(np.asarray(s.data), local["image"][s.index[0]])
                                   for s in shards),
            "values_ok": bool(np.array_equal(np.asarray(g["image"]), local["image"])),
        }))
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["devices"] == 8 and r["same_as_single_process"]
    assert r["shape"] == [32, 8, 8, 1] and r["label_shape"] == [32]
    assert r["sharding_ok"] and r["shard_rows"] == [4] * 8
    assert r["shards_in_order"] and r["values_ok"]


# ---------------------------------------------------------------- errors: one line each

def _one_line_error(config_fn, match: str, exc=data.DataError):
    with pytest.raises(exc, match=match) as e:
        config_fn()
    assert "\n" not in str(e.value)


def test_batch_not_divisible_by_processes(arrays_dir):
    _one_line_error(lambda: data.train_iterator(_config(arrays_dir, batch_size=9), process_index=0,
                                                process_count=2), "batch_size=9", ValueError)
    _one_line_error(lambda: data.eval_batches(_config(arrays_dir, eval_batch_size=10),
                                              process_index=0, process_count=4),
                    "eval_batch_size=10", ValueError)
    _one_line_error(lambda: data.train_iterator(_config(arrays_dir, batch_size=64),
                                                process_index=0, process_count=1), "exceeds")


def test_missing_and_unreadable_data(tmp_path, arrays_dir):
    _one_line_error(lambda: data.dataset_info(_config(tmp_path / "nowhere").dataset),
                    "does not exist")
    _one_line_error(lambda: data.dataset_info(_config(tmp_path).dataset), r"no train\*\.npz")
    (tmp_path / "train.npz").write_bytes(b"not a zip file")
    (tmp_path / "test.npz").write_bytes(b"not a zip file")
    _one_line_error(lambda: data.dataset_info(_config(tmp_path).dataset), "cannot read")
    np.savez(tmp_path / "train.npz", image=np.zeros((4, 32, 32, 3), np.float32), label=np.zeros(4))
    _one_line_error(lambda: data.dataset_info(_config(tmp_path).dataset), "uint8")


def test_out_of_range_label(tmp_path):
    _write_arrays(tmp_path)
    config = _config(tmp_path)
    config.dataset.num_classes = 50                  # labels go up to 60 in the train files
    _one_line_error(lambda: next(data.train_iterator(config, process_index=0, process_count=1)),
                    r"label 50 .*outside \[0, 50\)")


def test_unknown_names_and_inconsistent_config(arrays_dir):
    for field, value, match in [("name", "mnist", "unknown dataset"),
                                ("normalization", "mnist", "unknown normalization"),
                                ("augment", "autoaugment", "unknown augment"),
                                ("image_size", 28, "image_size=28"),
                                ("normalization", "digits", "1 channel")]:
        config = _config(arrays_dir)
        config.dataset[field] = value
        _one_line_error(lambda: data.dataset_info(config.dataset), match)
    _one_line_error(lambda: data.eval_batches(_config(arrays_dir), process_index=0,
                                              process_count=1, split="validation"), "unknown split")


# ---------------------------------------------------------------- the real CIFAR-10 arrays

@pytest.mark.skipif(not CIFAR10_DIR.is_dir(), reason=f"{CIFAR10_DIR} not present")
def test_real_cifar10_arrays_load_with_the_spec_statistics():
    c = configs.base_config()
    c.dataset.name, c.dataset.data_dir = "arrays", str(CIFAR10_DIR)
    info = data.dataset_info(c.dataset)
    assert (info.num_train, info.num_eval, info.image_shape) == (50000, 10000, (32, 32, 3))
    train = sources.open_split(c.dataset, "train", info)
    images, labels = train.read(np.arange(len(train)))
    assert images.shape == (50000, 32, 32, 3) and np.bincount(labels).tolist() == [5000] * 10
    mean = images.reshape(-1, 3).mean(axis=0, dtype=np.float64)
    assert np.allclose(mean, NORMALIZATION["cifar10"][0], atol=0.01)
    test_images, _ = sources.open_split(c.dataset, "test", info).read(np.arange(10000))
    assert test_images.shape == (10000, 32, 32, 3)
