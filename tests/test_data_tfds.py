"""TFDS path: tiny `cifar10`, `svhn_cropped` and `imagenet2012` built here as ArrayRecord (no
TensorFlow, no network) and read through the registered TFDS builders, as the real data sets are."""
from __future__ import annotations

import inspect
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from etils import epath  # noqa: E402
from PIL import Image  # noqa: E402
from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder  # noqa: E402
from tensorflow_datasets.datasets.svhn_cropped import svhn_cropped_dataset_builder  # noqa: E402
from tensorflow_datasets.image_classification import cifar  # noqa: E402

from igc_jax import configs, data  # noqa: E402
from igc_jax.data import sources  # noqa: E402
from igc_jax.data.normalization import NORMALIZATION  # noqa: E402

# name → (registered builder class, {split: (first example number v, number of examples)}).
# CIFAR / SVHN image v is 32×32 with every pixel v, so an example is identified by its pixels;
# ImageNet image v is random JPEG of a size that varies with v, and its label is v.
TINY = {
    "cifar10": (cifar.Cifar10, {"train": (0, 40), "test": (100, 13)}),
    "svhn_cropped": (svhn_cropped_dataset_builder.Builder,
                     {"train": (0, 9), "extra": (50, 31), "test": (100, 13)}),
    "imagenet2012": (imagenet2012_dataset_builder.Builder,
                     {"train": (0, 20), "validation": (100, 7)}),
}


def _image(name: str, v: int) -> Image.Image:
    if name != "imagenet2012":
        return Image.fromarray(np.full((32, 32, 3), v, np.uint8))
    rng = np.random.default_rng(v)
    return Image.fromarray(rng.integers(0, 256, (40 + v % 17, 48 + v % 23, 3), dtype=np.uint8))


def _tiny_builder(name: str, data_dir: Path):
    """A subclass of the registered builder that generates the tiny splits (no download)."""
    base, splits = TINY[name]

    def split_generators(self, dl_manager):
        return {split: self._generate_examples(*spec) for split, spec in splits.items()}

    def generate_examples(self, first, count):
        features = self.info.features
        for v in range(first, first + count):
            example = {"image": _image(name, v), "label": v % features["label"].num_classes}
            example.update({key: str(v) for key in ("id", "file_name") if key in features})
            yield v, example

    cls = type(f"Tiny_{name}", (base,), {
        "name": name,
        "_split_generators": split_generators,
        "_generate_examples": generate_examples,
        # The metadata files (citation, tags) of the real builder's package.
        "_get_pkg_dir_path": classmethod(lambda c: epath.Path(inspect.getfile(base)).parent),
    }, skip_registration=True)
    return cls(data_dir=str(data_dir), file_format="array_record")


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tfds")
    tfds.disable_progress_bar()
    for name in TINY:
        _tiny_builder(name, directory).download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return directory


def _config(name: str, data_dir: Path, batch_size: int = 8, eval_batch_size: int = 6):
    c = configs.base_config()
    c.dataset.update(name=name, data_dir=str(data_dir), augment="cifar",
                     normalization="cifar10" if name == "cifar10" else "svhn")
    c.batch_size, c.eval_batch_size = batch_size, eval_batch_size
    return c


def _values(batch: dict, normalization: str) -> list[int]:
    """The constant pixel value of each real example, recovered from the normalised image."""
    mean, std = NORMALIZATION[normalization]
    pixels = batch["image"][:, 16, 16, 0] * std[0] + mean[0]
    return np.rint(pixels[batch["mask"] == 1]).astype(int).tolist()


def test_dataset_info_from_tfds_metadata(tfds_dir):
    assert data.dataset_info(_config("cifar10", tfds_dir).dataset) == data.DatasetInfo(
        "cifar10", 10, (32, 32, 3), 40, 13)
    # svhn_cropped trains on train + extra.
    assert data.dataset_info(_config("svhn_cropped", tfds_dir).dataset) == data.DatasetInfo(
        "svhn_cropped", 10, (32, 32, 3), 40, 13)


@pytest.mark.parametrize("name", ["cifar10", "svhn_cropped"])
def test_eval_covers_the_tfds_split_exactly_once(tfds_dir, name):
    config = _config(name, tfds_dir)
    norm = config.dataset.normalization
    for split, values in [("test", range(100, 113)),
                          ("train", [v for s, (f, n) in TINY[name][1].items() if s != "test"
                                     for v in range(f, f + n)])]:
        seen = [v for p in (0, 1) for b in data.eval_batches(config, process_index=p,
                                                               process_count=2, split=split)
                for v in _values(b, norm)]
        assert sorted(seen) == sorted(values)


def test_tfds_training_batches_are_deterministic_and_resumable(tfds_dir):
    config = _config("svhn_cropped", tfds_dir)
    it = data.train_iterator(config, process_index=0, process_count=1)
    assert it.steps_per_epoch == 5
    run = [next(it) for _ in range(7)]
    epoch = np.concatenate([b["label"] for b in run[:5]])
    assert sorted(epoch.tolist()) == sorted(v % 10 for v in [*range(9), *range(50, 81)])
    resumed = data.train_iterator(config, process_index=0, process_count=1)
    resumed.set_state({"step": 4})
    for expected in run[4:]:
        got = next(resumed)
        assert np.array_equal(got["image"], expected["image"])
        assert np.array_equal(got["label"], expected["label"])


def test_imagenet_sized_images_through_the_imagenet_preprocessing(tfds_dir):
    config = _config("imagenet2012", tfds_dir, batch_size=4, eval_batch_size=4)
    config.dataset.update(num_classes=1000, image_size=24, augment="imagenet_inception",
                          normalization="imagenet")
    assert data.dataset_info(config.dataset) == data.DatasetInfo(
        "imagenet2012", 1000, (24, 24, 3), 20, 7)
    it = data.train_iterator(config, process_index=0, process_count=1)
    first = [next(it) for _ in range(6)]                  # 5 steps per epoch: into epoch 2
    assert all(b["image"].shape == (4, 24, 24, 3) for b in first)
    assert sorted(np.concatenate([b["label"] for b in first[:5]]).tolist()) == list(range(20))
    it.set_state({"step": 3})
    assert all(np.array_equal(next(it)["image"], b["image"]) for b in first[3:])
    # Evaluation reads TFDS's validation split: short-side resize and centre crop, in order.
    runs = [list(data.eval_batches(config, process_index=0, process_count=1)) for _ in range(2)]
    assert [len(r) for r in runs] == [2, 2]
    labels = np.concatenate([b["label"][b["mask"] == 1] for b in runs[0]])
    info = data.dataset_info(config.dataset)
    _, stored = sources.open_split(config.dataset, "test", info).read(np.arange(7))
    assert labels.tolist() == stored.tolist() and sorted(labels.tolist()) == list(range(100, 107))
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(*runs))


def test_tfds_split_pickles_for_worker_processes(tfds_dir):
    config = _config("svhn_cropped", tfds_dir)
    split = sources.open_split(config.dataset, "train", data.dataset_info(config.dataset))
    images, labels = split.read([0, 8, 9, 39])            # both parts: train then extra
    copy = pickle.loads(pickle.dumps(split))
    again, again_labels = copy.read([0, 8, 9, 39])
    assert np.array_equal(images, again) and np.array_equal(labels, again_labels)
    assert images.shape == (4, 32, 32, 3)


def test_tfds_errors_are_one_line(tfds_dir, tmp_path):
    config = _config("cifar100", tfds_dir)
    config.dataset.num_classes = 100
    with pytest.raises(data.DataError, match="not prepared in .*tfds build cifar100") as e:
        data.dataset_info(config.dataset)
    assert "\n" not in str(e.value)
    config = _config("imagenet2012", tmp_path / "absent")
    with pytest.raises(data.DataError, match="does not exist.*downloads/manual"):
        data.dataset_info(config.dataset)
    config = _config("cifar10", tfds_dir)
    config.dataset.num_classes = 100
    with pytest.raises(data.DataError, match="10 classes but dataset.num_classes=100"):
        data.dataset_info(config.dataset)


def test_a_label_out_of_range_is_one_line_naming_the_files_and_the_index(tfds_dir, monkeypatch):
    dataset = _config("cifar10", tfds_dir).dataset
    split = sources.open_split(dataset, "train", data.dataset_info(dataset))
    original = split._read_records

    def damaged(k, keys):  # record 3 of the split carries a label no class has
        return [dict(r, label=10) if key == 3 else r for key, r in zip(keys, original(k, keys))]

    monkeypatch.setattr(split, "_read_records", damaged)
    split.read(np.arange(3))  # the records before it read fine
    with pytest.raises(data.DataError, match=r"label 10 of record 3 of .*cifar10-train.*"
                                             r"outside \[0, 10\)") as e:
        split.read(np.arange(8))
    assert "\n" not in str(e.value)


def test_an_unreadable_record_is_one_line_naming_the_files_and_the_index(tfds_dir, tmp_path):
    copy = tmp_path / "tfds"
    shutil.copytree(tfds_dir, copy)
    (record_file,) = [p for p in copy.rglob("cifar10-train.array_record*") if p.is_file()]
    raw = bytearray(record_file.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 64] = bytes(64)  # zero a stretch inside the records
    record_file.write_bytes(bytes(raw))
    dataset = _config("cifar10", copy).dataset
    split = sources.open_split(dataset, "train", data.dataset_info(dataset))
    with pytest.raises(data.DataError, match=r"cannot read record \d+ of .*cifar10-train") as e:
        split.read(np.arange(len(split)))
    assert "\n" not in str(e.value)


def test_imagenet_batches_are_the_same_with_0_and_2_worker_processes(tfds_dir):
    """Batch k is a function of (seed, k, process index and count) only: worker processes (grain,
    batches through shared memory) change nothing, also from a resumed step."""
    config = _config("imagenet2012", tfds_dir, batch_size=4)
    config.dataset.update(num_classes=1000, image_size=24, augment="imagenet_inception",
                          normalization="imagenet", num_workers=0)
    info = data.dataset_info(config.dataset)
    plain = data.train_iterator(config, info, process_index=1, process_count=2)
    expected = [next(plain) for _ in range(7)]              # 10 steps per epoch of 2 per process
    config.dataset.num_workers = 2
    workers = data.train_iterator(config, info, process_index=1, process_count=2)
    assert workers.num_workers == 2
    for want in expected[:4]:
        got = next(workers)
        assert np.array_equal(got["image"], want["image"])
        assert np.array_equal(got["label"], want["label"])
    workers.set_state({"step": 5})
    for want in expected[5:]:
        assert np.array_equal(next(workers)["image"], want["image"])


def test_num_workers_auto_is_sized_to_the_cpus_for_imagenet_only(monkeypatch):
    from igc_jax.data import pipeline

    c = configs.imagenet_recipe("IGC-L4M32+Ident.")
    assert c.dataset.num_workers == -1
    monkeypatch.setattr(pipeline, "available_cpus", lambda: 8)
    assert pipeline.num_workers(c.dataset) == 7
    monkeypatch.setattr(pipeline, "available_cpus", lambda: 4)
    assert pipeline.num_workers(c.dataset) == 3
    for small in (1, 2, 3):                    # threads beat 1–2 one-core workers (measured)
        monkeypatch.setattr(pipeline, "available_cpus", lambda: small)
        assert pipeline.num_workers(c.dataset) == 0
    monkeypatch.setattr(pipeline, "available_cpus", lambda: 500)
    assert pipeline.num_workers(c.dataset) == pipeline.MAX_AUTO_WORKERS
    assert pipeline.num_workers(configs.base_config().dataset) == 0      # cifar: threads
    c.dataset.num_workers = 3
    assert pipeline.num_workers(c.dataset) == 3
    c.dataset.num_workers = -2
    with pytest.raises(ValueError, match="num_workers"):
        pipeline.num_workers(c.dataset)
