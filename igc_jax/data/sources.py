"""Where the examples come from: TFDS (ArrayRecord), local .npz arrays, scikit-learn's digits.

Each source opens as a `Split`: a random-access, picklable reader of (uint8 images, int32 labels)
that loads or opens its data on first use, so grain worker processes receive only the recipe.
`dataset_info` reads sizes and shapes from metadata alone (TFDS's dataset_info.json, the .npy
headers inside the .npz files), never the images; the caller computes it once and passes it to
`open_split` and the pipeline.

Paths go through etils epath, so a TFDS data dir may be on gs:// (gcsfs reads its metadata).
ArrayRecord (>= 0.8.3) reads the record files on gs:// itself, through riegeli's GCS reader
(google-cloud-cpp: the VM's credentials, one ranged GET per record), so training reads them in
place, with no local copy. Only when $IGC_JAX_DATA_CACHE is set is a remote dataset copied there
once, file by file, and read from the copy (the copy is logged; a cache without room for it stops
with a one-line DataError saying what to do).
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import logging
import os
import shutil
import threading
import zipfile
import zlib
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from etils import epath

from igc_jax.data.augment import AUGMENTATIONS, IMAGENET_AUGMENTATIONS
from igc_jax.data.normalization import NORMALIZATION
from igc_jax.errors import UserError

# config.dataset.name → (TFDS splits concatenated for training, TFDS split for evaluation).
TFDS_SPLITS: dict[str, tuple[tuple[str, ...], str]] = {
    "cifar10": (("train",), "test"),
    "cifar100": (("train",), "test"),
    "svhn_cropped": (("train", "extra"), "test"),        # 73,257 + 531,131 = 604,388 (spec §4)
    "imagenet2012": (("train",), "validation"),           # its `test` split has no labels
}
DATASETS = (*TFDS_SPLITS, "arrays", "digits")
SPLITS = ("train", "test")

# scikit-learn's 1,797 digits in their stored order: the first 1,347 (75%) train, the last 450
# test. Contiguous rather than shuffled, so the split never changes and (the images being grouped
# by writer) stays close to writer-disjoint.
DIGITS_TRAIN = 1347
DIGITS_TOTAL = 1797
DIGITS_SHAPE = (8, 8, 1)

log = logging.getLogger(__name__)

# Prefetch threads ask for the data at the same moment: load (or open) it once.
_LOAD_LOCK = threading.Lock()

ARRAYS_FORMAT = ("a folder of train*.npz and test*.npz, each with 'image' (uint8, N×H×W×C) "
                 "and 'label' (integers in [0, num_classes))")


class DataError(UserError):
    """A data set that is missing, unreadable or inconsistent with the config (one-line message
    naming the file and, where one is at fault, the index)."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs before reading any example."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]    # (H, W, C) as the network sees it
    num_train: int
    num_eval: int


class Split(Protocol):
    """Random access to one split: `read(indices)` → (uint8 images, int32 labels)."""

    def __len__(self) -> int: ...

    def read(self, indices: Sequence[int]) -> tuple[np.ndarray | list[np.ndarray], np.ndarray]: ...


# ---------------------------------------------------------------- in-memory arrays (npz, digits)

@dataclasses.dataclass(frozen=True)
class ArraySplit:
    """Images held in memory; `load` (a picklable, cached function) runs on first read."""

    load: Callable[[], tuple[np.ndarray, np.ndarray]]
    size: int

    def __len__(self) -> int:
        return self.size

    def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        with _LOAD_LOCK:
            images, labels = self.load()
        idx = np.asarray(indices, dtype=np.intp)
        return images[idx], labels[idx]


@functools.lru_cache(maxsize=None)
def load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits as uint8 (N, 8, 8, 1): values 0–16 scaled by 255/16 and rounded."""
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    part = slice(0, DIGITS_TRAIN) if split == "train" else slice(DIGITS_TRAIN, None)
    return images[part], labels[part]


def _npz_files(directory: str, split: str) -> tuple[str, ...]:
    files = tuple(sorted(glob.glob(os.path.join(glob.escape(directory), f"{split}*.npz"))))
    if not files:
        raise DataError(f"no {split}*.npz in {directory}; expected {ARRAYS_FORMAT}")
    return files


# What a damaged .npz raises: a bad zip directory or CRC, a bad deflate stream (zlib.error), a
# cut file (EOFError), a bad .npy header (ValueError).
_NPZ_ERRORS = (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error)


def _npy_header(path: str, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of array `key` in an .npz, reading only the .npy header (cheap)."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(member)
    except KeyError:
        raise DataError(f"{path} has no array {key!r}; expected {ARRAYS_FORMAT}") from None
    except _NPZ_ERRORS as e:
        raise DataError(f"cannot read {path}: {e}") from None
    return shape, dtype


def _npz_meta(files: Sequence[str]) -> tuple[int, tuple[int, int, int]]:
    """(number of examples, image shape) of a split, checked for the arrays format."""
    total, image_shape = 0, None
    for path in files:
        shape, dtype = _npy_header(path, "image")
        label_shape, label_dtype = _npy_header(path, "label")
        if dtype != np.uint8 or len(shape) != 4:
            raise DataError(f"{path}: 'image' is {dtype} with shape {shape}; "
                            "expected uint8 N×H×W×C")
        if not np.issubdtype(label_dtype, np.integer) or label_shape != shape[:1]:
            raise DataError(f"{path}: 'label' is {label_dtype} with shape {label_shape}; "
                            f"expected {shape[0]} integers")
        if image_shape not in (None, shape[1:]):
            raise DataError(f"{path}: images are {shape[1:]} but earlier files hold {image_shape}")
        total, image_shape = total + shape[0], shape[1:]
    return total, image_shape


def _npz_array(path: str, key: str) -> np.ndarray:
    """Array `key` of an .npz, any damage as a DataError naming the file and the array."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return z[key]
    except KeyError:
        raise DataError(f"{path} has no array {key!r}; expected {ARRAYS_FORMAT}") from None
    except _NPZ_ERRORS as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read array {key!r} of {path}: {reason}") from None


def _check_label_range(path: str, labels: np.ndarray, num_classes: int) -> None:
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        index = int(np.argmax(bad))
        raise DataError(f"{path}: label {labels[index]} at index {index} is outside "
                        f"[0, {num_classes}) (dataset.num_classes={num_classes})")


@functools.lru_cache(maxsize=4)
def load_npz(files: tuple[str, ...], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the files' images and labels (in name order), checking the label range."""
    images, labels = [], []
    for path in files:
        images.append(_npz_array(path, "image"))
        labels.append(_npz_array(path, "label"))
        _check_label_range(path, labels[-1], num_classes)
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)


def check_labels(dataset_cfg: Any) -> None:
    """Labels in [0, dataset.num_classes) before training starts, where they are cheap to read
    apart from the images (the .npz 'label' arrays); TFDS records are checked as they are read."""
    if dataset_cfg.name != "arrays":
        return
    directory = _arrays_dir(dataset_cfg)
    for split in SPLITS:
        for path in _npz_files(directory, split):
            _check_label_range(path, _npz_array(path, "label"), dataset_cfg.num_classes)


def _arrays_dir(dataset_cfg: Any) -> str:
    directory = dataset_cfg.data_dir
    if not directory:
        raise DataError(f"dataset 'arrays' needs dataset.data_dir: {ARRAYS_FORMAT}")
    if is_remote(directory):
        raise DataError(f"dataset 'arrays' reads local .npz files only, not {directory}; "
                        "copy them to a local folder")
    if not os.path.isdir(directory):
        raise DataError(f"arrays data directory {directory} does not exist; "
                        f"expected {ARRAYS_FORMAT}")
    return directory


# ---------------------------------------------------------------- TFDS (ArrayRecord)

def tfds_data_dir(dataset_cfg: Any) -> str:
    """dataset.data_dir, else $TFDS_DATA_DIR, else TFDS's default ~/tensorflow_datasets."""
    return (dataset_cfg.data_dir or os.environ.get("TFDS_DATA_DIR")
            or os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def _prepare_hint(name: str, data_dir: str) -> str:
    manual = ("put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
              f"{data_dir}/downloads/manual (TFDS manual download), then "
              if name == "imagenet2012" else "")
    return (f"prepare it once: {manual}pip install 'igc-jax[prepare]' && "
            f"tfds build {name} --data_dir={data_dir} --file_format=array_record")


def is_remote(path: str) -> bool:
    """True for object-store paths (gs://, s3://...), which only epath can open."""
    return "://" in str(path)


def data_cache_dir() -> epath.Path | None:
    """$IGC_JAX_DATA_CACHE: where remote ArrayRecord datasets are copied before reading, if set
    (opt-in; unset, they are read in place)."""
    value = os.environ.get("IGC_JAX_DATA_CACHE")
    return epath.Path(value) if value else None


def _local_copy(remote_root: str, version_dir: epath.Path) -> str:
    """A local TFDS data dir holding a complete copy of `version_dir` (under `remote_root`).

    Copied once (into a temporary folder, renamed when complete, so a killed copy is redone);
    later calls, and worker processes, find it in place.
    """
    relative = str(version_dir)[len(str(remote_root).rstrip("/")) + 1:]
    root = data_cache_dir() / str(remote_root).replace("://", "/")
    local = root / relative
    if (local / "dataset_info.json").exists():
        return str(root)
    files = [f for f in version_dir.iterdir() if not f.is_dir()]
    need = sum(f.stat().length for f in files)
    cache = data_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(str(cache)).free
    if need > 0.95 * free:
        raise DataError(f"IGC_JAX_DATA_CACHE={cache} has {free / 1e9:.1f} GB free, too little "
                        f"for a copy of {version_dir} ({need / 1e9:.1f} GB); unset it to read "
                        f"the dataset in place, or point it at a local disk with room")
    log.warning("IGC_JAX_DATA_CACHE is set: copying %s (%d files, %.2f GB) to %s once",
                version_dir, len(files), need / 1e9, local)
    tmp = local.parent / f".{local.name}.incomplete-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    for f in files:
        with f.open("rb") as src, (tmp / f.name).open("wb") as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
    if (local / "dataset_info.json").exists():      # another process finished first
        shutil.rmtree(str(tmp))
    else:
        os.replace(str(tmp), str(local))
    return str(root)


@functools.lru_cache(maxsize=8)
def _tfds_builder(name: str, data_dir: str) -> Any:
    """The prepared builder (code builder, metadata from disk); DataError if it is not prepared
    or a record file of its splits is missing.

    With $IGC_JAX_DATA_CACHE set, a remote data dir is checked there, then replaced by its local
    copy (`_local_copy`)."""
    import tensorflow_datasets as tfds

    if not epath.Path(data_dir).is_dir():
        raise DataError(f"TFDS data directory {data_dir} does not exist; "
                        f"{_prepare_hint(name, data_dir)}")
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        raise DataError(f"TFDS dataset {name} is not prepared in {data_dir} (looked for "
                        f"{builder.data_path}/dataset_info.json); {_prepare_hint(name, data_dir)}")
    file_format = builder.info.file_format
    if file_format is None or file_format.value != "array_record":
        stored = getattr(file_format, "value", file_format)
        raise DataError(f"TFDS dataset {name} in {builder.data_path} is stored as {stored}, not "
                        f"array_record (needed for random access); {_prepare_hint(name, data_dir)}")
    _check_record_files(builder)
    if is_remote(data_dir) and data_cache_dir() is not None:
        return _tfds_builder(name, _local_copy(data_dir, epath.Path(builder.data_path)))
    return builder


def _shards(builder: Any, split: str) -> list[tuple[str, int]]:
    """(file, records read from it) of a split, in record order."""
    return [(str(epath.Path(builder.data_path) / epath.Path(f.filename).name), f.take)
            for f in builder.info.splits[split].file_instructions]


def _check_record_files(builder: Any) -> None:
    """Every record file that dataset_info.json lists is there (one directory listing, also on
    gs://): a missing one is a DataError naming it, before any training."""
    present = {p.name for p in epath.Path(builder.data_path).iterdir()}
    for split in builder.info.splits:
        for path, _ in _shards(builder, split):
            if epath.Path(path).name not in present:
                raise DataError(f"record file {path} (split {split!r} of {builder.info.name}) "
                                "is missing; copy the whole dataset again")


def _skip_image_decoding() -> dict:
    import tensorflow_datasets as tfds

    return {"image": tfds.decode.SkipDecoding()}


class TfdsSplit:
    """One or more TFDS splits read as one, through `builder.as_data_source` (no TensorFlow).

    With `encoded`, images come back as the stored JPEG bytes (TFDS's decoding skipped), for
    `jpeg` to decode at a reduced scale.
    """

    def __init__(self, name: str, data_dir: str, splits: Sequence[str], encoded: bool = False):
        builder = _tfds_builder(name, data_dir)
        # The data dir read (a remote one's local copy, where one is made), so that worker
        # processes open it directly.
        data_dir = str(epath.Path(builder.data_path).parent.parent)
        self.name, self.data_dir, self.splits = name, data_dir, tuple(splits)
        self.encoded = encoded
        info = builder.info
        self.num_classes = int(info.features["label"].num_classes)
        sizes = [info.splits[s].num_examples for s in self.splits]
        self._offsets = np.cumsum([0, *sizes])
        self._sources: list[Any] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_sources": None}    # workers reopen the files themselves

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _open(self) -> list[Any]:
        with _LOAD_LOCK:
            if self._sources is None:
                builder = _tfds_builder(self.name, self.data_dir)
                decoders = _skip_image_decoding() if self.encoded else None
                self._sources = [builder.as_data_source(split=s, decoders=decoders)
                                 for s in self.splits]
        return self._sources

    def _read_records(self, k: int, keys: list[int]) -> list[Any]:
        """Records `keys` of split k; an unreadable one is a DataError naming its file (object)
        and the record's index in the split (found one by one, only once a batch has failed)."""
        source = self._open()[k]
        try:
            return list(source.__getitems__(keys))
        except Exception as batch_error:  # array_record / protobuf / decoding raise many types
            for key in keys:
                try:
                    source.__getitems__([key])
                except Exception as e:
                    error = e
                    break
            else:
                key, error = keys[0], batch_error
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise DataError(f"cannot read record {key} of {self.name}'s {self.splits[k]} split "
                            f"in {self._where(k, key)}: {reason}") from None

    def _where(self, k: int, key: int) -> str:
        """The record file (object) holding record `key` of split k."""
        shards = _shards(_tfds_builder(self.name, self.data_dir), self.splits[k])
        ends = np.cumsum([take for _, take in shards])
        return shards[min(int(np.searchsorted(ends, key, side="right")), len(shards) - 1)][0]

    def read(self, indices: Sequence[int]) -> tuple[np.ndarray | list[np.ndarray], np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        part = np.searchsorted(self._offsets, indices, side="right") - 1
        records: list[Any] = [None] * len(indices)
        for k in np.unique(part):
            where = np.flatnonzero(part == k)
            keys = (indices[where] - self._offsets[k]).tolist()
            for i, record in zip(where, self._read_records(int(k), keys)):
                records[i] = record
        images = [r["image"] for r in records]
        labels = np.asarray([r["label"] for r in records], dtype=np.int64)
        bad = np.flatnonzero((labels < 0) | (labels >= self.num_classes))
        if bad.size:  # a damaged record: named by its file and index, as an unreadable one
            i = int(bad[0])
            record = int(indices[i] - self._offsets[part[i]])
            raise DataError(f"label {labels[i]} of record {record} of "
                            f"{self._where(int(part[i]), record)} is outside "
                            f"[0, {self.num_classes})")
        labels = labels.astype(np.int32)
        if self.encoded:
            return images, labels
        if images and all(im.shape == images[0].shape for im in images):
            return np.stack(images), labels
        return images, labels


# ---------------------------------------------------------------- selection by config

def _check_names(dataset_cfg: Any) -> None:
    if dataset_cfg.name not in DATASETS:
        raise DataError(f"unknown dataset {dataset_cfg.name!r}; choose from {', '.join(DATASETS)}")
    if dataset_cfg.normalization not in NORMALIZATION:
        raise DataError(f"unknown normalization {dataset_cfg.normalization!r}; choose from "
                        f"{', '.join(NORMALIZATION)}")
    if dataset_cfg.augment not in AUGMENTATIONS:
        raise DataError(f"unknown augment {dataset_cfg.augment!r}; choose from "
                        f"{', '.join(AUGMENTATIONS)}")


def _stored(dataset_cfg: Any) -> tuple[str, int, tuple[int | None, int | None, int], int, int]:
    """(what, num_classes, stored image shape (None: varies), num_train, num_eval), from metadata;
    `what` names the data in messages."""
    name = dataset_cfg.name
    if name == "digits":
        return name, 10, DIGITS_SHAPE, DIGITS_TRAIN, DIGITS_TOTAL - DIGITS_TRAIN
    if name == "arrays":
        directory = _arrays_dir(dataset_cfg)
        num_train, shape = _npz_meta(_npz_files(directory, "train"))
        num_eval, test_shape = _npz_meta(_npz_files(directory, "test"))
        if test_shape != shape:
            raise DataError(f"{directory}: train images are {shape} "
                            f"but test images are {test_shape}")
        return f"arrays in {directory}", dataset_cfg.num_classes, shape, num_train, num_eval
    builder = _tfds_builder(name, tfds_data_dir(dataset_cfg))
    train_splits, eval_split = TFDS_SPLITS[name]
    info = builder.info
    num_train = sum(info.splits[s].num_examples for s in train_splits)
    return (name, info.features["label"].num_classes, tuple(info.features["image"].shape),
            num_train, info.splits[eval_split].num_examples)


def dataset_info(dataset_cfg: Any) -> DatasetInfo:
    """Sizes and the network's input shape, from metadata only; DataError on any inconsistency.

    The ImageNet augmentations resize every image to image_size×image_size; 'cifar' and 'none'
    keep the stored size, which must then equal image_size.
    """
    _check_names(dataset_cfg)
    name, num_classes, (h, w, c), num_train, num_eval = _stored(dataset_cfg)
    if num_classes != dataset_cfg.num_classes:
        raise DataError(f"{name} has {num_classes} classes but dataset.num_classes="
                        f"{dataset_cfg.num_classes}")
    size = dataset_cfg.image_size
    resizes = dataset_cfg.augment in IMAGENET_AUGMENTATIONS
    if not resizes and (h, w) != (size, size):
        stored = "of varying size" if h is None else f"{h}×{w}"
        raise DataError(f"{name} images are {stored} but dataset.image_size={size} and augment="
                        f"{dataset_cfg.augment!r} does not resize (only "
                        f"{' and '.join(map(repr, IMAGENET_AUGMENTATIONS))} do)")
    channels = len(NORMALIZATION[dataset_cfg.normalization][0])
    if channels != c:
        raise DataError(f"normalization {dataset_cfg.normalization!r} has {channels} channel(s) "
                        f"but {name} images have {c}")
    return DatasetInfo(dataset_cfg.name, num_classes, (size, size, c), num_train, num_eval)


def open_split(dataset_cfg: Any, split: str, info: DatasetInfo) -> Split:
    """The reader of split 'train' or 'test' (for imagenet2012, 'test' is TFDS's validation);
    `info` is `dataset_info(dataset_cfg)`, computed once by the caller."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    size = info.num_train if split == "train" else info.num_eval
    name = dataset_cfg.name
    if name == "digits":
        return ArraySplit(functools.partial(load_digits, split), size)
    if name == "arrays":
        files = _npz_files(_arrays_dir(dataset_cfg), split)
        return ArraySplit(functools.partial(load_npz, files, dataset_cfg.num_classes), size)
    train_splits, eval_split = TFDS_SPLITS[name]
    return TfdsSplit(name, tfds_data_dir(dataset_cfg),
                     train_splits if split == "train" else (eval_split,),
                     encoded=dataset_cfg.augment in IMAGENET_AUGMENTATIONS)
