"""Deterministic, per-process training and evaluation batches, built on grain.

Training batch k (global size B, n examples, S = n // B steps per epoch, the remainder dropped):
epoch e = k // S has its own order (`randomness.epoch_permutation(seed, e, n)`), global batch k
holds its positions [(k mod S)·B, (k mod S + 1)·B), and process p of P takes the p-th contiguous
B/P of them. Augmentation draws from a hash of (seed, e, example index). So batch k is a pure
function of (seed, k, p, P), the global batch does not even depend on P, and the iterator's whole
state is the step. grain maps steps to batches with prefetching threads and, when
dataset.num_workers > 0, worker processes that hand the batches back through shared memory; grain
keeps their order, so the batches do not depend on the number of workers.

dataset.num_workers = -1 (auto, the default) sizes the workers to the CPUs this process may run on:
one per CPU but one (left to the training loop), at most MAX_AUTO_WORKERS, for the ImageNet
augmentations (a JPEG decode and resize per image) on hosts of MIN_CPUS_FOR_WORKERS CPUs or more
(below that, threads in this process are faster); 0 for the others, whose vectorised numpy
preprocessing of in-memory arrays runs faster in threads than the workers' start (~13 s) repays
(benchmarks/results/input_pipeline.md). The choice is logged once per setting.

Evaluation walks the split in order; the global batches past its end are padded with zeros and
`mask` 0, so every process yields the same number of batches and every example counts once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import sys
from typing import Any, Iterator

import grain
import numpy as np

from igc_jax.data import preprocess, randomness, sources
from igc_jax.data.augment import IMAGENET_AUGMENTATIONS
from igc_jax.data.augment.inception import DEFAULT_COLOR_JITTER
from igc_jax.errors import UserError

log = logging.getLogger(__name__)

READ_THREADS = 2        # threads building batches ahead of the training step (no workers)
WORKER_READ_THREADS = 1  # per worker process: each worker is one core's worth of work
PREFETCH_BATCHES = 4    # batches kept ready
MAX_AUTO_WORKERS = 64   # each worker is a full Python process (its own imports and buffers)
# Below this many CPUs auto uses threads: READ_THREADS in this process keep about 1.8 cores busy
# (decode and resize release the GIL), one-thread workers one core each while one CPU is left to
# the training loop, so workers win from 4 CPUs (3 workers) on. Measured on 2 cores: threads 277,
# one worker 141, two workers 269 images/s (benchmarks/results/input_pipeline_imagenet.md).
MIN_CPUS_FOR_WORKERS = 4


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:             # not Linux
        return os.cpu_count() or 1


def num_workers(dataset_cfg: Any) -> int:
    """dataset.num_workers as a number: an int >= 0 as given, -1 (or "auto") sized to the host."""
    value = dataset_cfg.get("num_workers", -1)
    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    if value in ("auto", -1):
        return _auto_workers(dataset_cfg.augment, available_cpus())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"dataset.num_workers must be -1 (auto) or an integer >= 0, "
                        f"got {value!r}")
    return value


@functools.lru_cache(maxsize=None)
def _auto_workers(augment: str, cpus: int) -> int:
    if augment in IMAGENET_AUGMENTATIONS and cpus < MIN_CPUS_FOR_WORKERS:
        workers = 0
        log.warning("dataset.num_workers=auto: 0 worker processes (%d CPUs: %d threads in this "
                    "process decode faster than %d one-core worker(s) beside the training loop)",
                    cpus, READ_THREADS, max(cpus - 1, 1))
    elif augment in IMAGENET_AUGMENTATIONS:
        workers = min(cpus - 1, MAX_AUTO_WORKERS)
        log.warning("dataset.num_workers=auto: %d worker processes (%d CPUs available, one left "
                    "to the training loop)", workers, cpus)
    else:
        workers = 0
        log.warning("dataset.num_workers=auto: 0 worker processes (augment=%r preprocesses "
                    "in-memory arrays faster in threads)", augment)
    return workers


def _local_batch(global_batch: int, process_index: int, process_count: int, what: str) -> int:
    """The per-process share of a global batch (the precondition: it splits evenly; the command
    line checks it first, igc_jax.training.validate.check_batch_split)."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in "
                         f"[0, process_count={process_count})")
    if global_batch <= 0 or global_batch % process_count:
        raise ValueError(f"{what}={global_batch} is not a positive multiple of the "
                         f"{process_count} processes")
    return global_batch // process_count


def preprocessing(dataset_cfg: Any) -> preprocess.Preprocessing:
    """The transforms of a dataset config (dataset.color_jitter is optional: 0 turns it off)."""
    return preprocess.Preprocessing(
        augment=dataset_cfg.augment, normalization=dataset_cfg.normalization,
        image_size=dataset_cfg.image_size,
        color_jitter=float(dataset_cfg.get("color_jitter", DEFAULT_COLOR_JITTER)))


@dataclasses.dataclass(frozen=True)
class TrainBatches:
    """Training batch `step` of one process, as a picklable function of the step."""

    split: sources.Split
    preprocessing: preprocess.Preprocessing
    seed: int
    batch_size: int           # global
    process_index: int
    process_count: int

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.process_count

    @property
    def steps_per_epoch(self) -> int:
        return len(self.split) // self.batch_size

    def indices(self, step: int) -> tuple[int, np.ndarray]:
        """(epoch, this process's example indices) of batch `step`."""
        epoch, position = divmod(int(step), self.steps_per_epoch)
        start = position * self.batch_size + self.process_index * self.local_batch_size
        order = randomness.epoch_permutation(self.seed, epoch, len(self.split))
        return epoch, order[start:start + self.local_batch_size]

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        epoch, idx = self.indices(step)
        images, labels = self.split.read(idx)
        u = randomness.example_uniforms(self.seed, epoch, idx, randomness.NUM_UNIFORMS)
        return {"image": self.preprocessing.train(images, u), "label": labels.astype(np.int32)}


@dataclasses.dataclass(frozen=True)
class EvalBatches:
    """Evaluation batch b of one process: examples in order, zero-padded and masked past the end."""

    split: sources.Split
    preprocessing: preprocess.Preprocessing
    image_shape: tuple[int, int, int]
    batch_size: int           # global
    process_index: int
    process_count: int

    @property
    def num_batches(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def __call__(self, b: int) -> dict[str, np.ndarray]:
        local = self.batch_size // self.process_count
        start = int(b) * self.batch_size + self.process_index * local
        valid = int(np.clip(len(self.split) - start, 0, local))
        image = np.zeros((local, *self.image_shape), np.float32)
        label = np.zeros((local,), np.int32)
        if valid:
            images, labels = self.split.read(np.arange(start, start + valid))
            image[:valid] = self.preprocessing.eval(images)
            label[:valid] = labels
        mask = (np.arange(local) < valid).astype(np.float32)
        return {"image": image, "label": label, "mask": mask}


def _ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app, use their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _prefetched(ds: grain.MapDataset, num_workers: int) -> grain.IterDataset:
    """Threads in this process (0 workers), or worker processes of one read thread each: JPEG
    decoding and PIL release the GIL, so two threads per worker took both cores of a 2-core host
    with one worker and a second worker had nothing left (benchmarks/results/
    input_pipeline_imagenet.md)."""
    threads = WORKER_READ_THREADS if num_workers > 0 else READ_THREADS
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                              prefetch_buffer_size=PREFETCH_BATCHES))
    if num_workers > 0:
        _ensure_absl_flags_parsed()
        # Each worker is one core's worth of work: one BLAS thread each (read at its start;
        # numpy in this process has read it already), not one per core per worker.
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it


@contextlib.contextmanager
def _worker_deaths_reported(num_workers: int, what: str, split: sources.Split) -> Iterator[None]:
    """A grain worker process that died (killed, out of memory) as a one-line DataError naming
    the batch; an exception raised inside a worker keeps its own type (a DataError stays one)."""
    try:
        yield
    except RuntimeError as e:
        if num_workers > 0 and "Worker process was terminated" in str(e):
            detail = str(e).split(".")[0]
            raise sources.DataError(
                f"a data worker process died while reading {what} of {_describe(split)} "
                f"({detail}); start the run again to resume from its last checkpoint, or set "
                "dataset.num_workers=0 to read in the training process") from None
        raise


def _describe(split: sources.Split) -> str:
    files = getattr(getattr(split, "load", None), "args", None)  # arrays: (files, num_classes)
    if files:
        return ", ".join(files[0])
    return getattr(split, "name", type(split).__name__)


class TrainIterator:
    """Infinite iterator of this process's training batches; its state is the next step."""

    def __init__(self, batches: TrainBatches, num_workers: int = 0, step: int = 0):
        self.batches, self.num_workers = batches, num_workers
        self._step, self._iter = step, None

    @property
    def steps_per_epoch(self) -> int:
        return self.batches.steps_per_epoch

    @property
    def local_batch_size(self) -> int:
        return self.batches.local_batch_size

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iter is None:
            steps = grain.MapDataset.range(self._step, sys.maxsize)
            self._iter = iter(_prefetched(steps.map(self.batches), self.num_workers))
        with _worker_deaths_reported(self.num_workers, f"training batch {self._step}",
                                     self.batches.split):
            batch = next(self._iter)
        self._step += 1
        return batch

    def get_state(self) -> dict[str, int]:
        """JSON-serialisable: {"step": index of the next batch}."""
        return {"step": self._step}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue at state["step"]: the batches an uninterrupted run would see from there."""
        step = state.get("step") if isinstance(state, dict) else None
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"train iterator state must be {{'step': int >= 0}}, got {state!r}")
        self._step, self._iter = int(step), None


def train_iterator(config: Any, info: sources.DatasetInfo | None = None, *, process_index: int,
                   process_count: int) -> TrainIterator:
    """This process's share of the training batches of `config` (see the module docstring).

    `info` is `dataset_info(config.dataset)`, computed once by the caller (None: computed here,
    for standalone use)."""
    _local_batch(config.batch_size, process_index, process_count, "batch_size")
    info = info or sources.dataset_info(config.dataset)
    if info.num_train < config.batch_size:
        raise sources.DataError(f"batch_size={config.batch_size} exceeds the {info.num_train} "
                                f"training examples of {info.name}")
    batches = TrainBatches(sources.open_split(config.dataset, "train", info),
                           preprocessing(config.dataset), int(config.seed), config.batch_size,
                           process_index, process_count)
    return TrainIterator(batches, num_workers=num_workers(config.dataset))


def eval_batches(config: Any, info: sources.DatasetInfo | None = None, *, process_index: int,
                 process_count: int, split: str = "test") -> Iterator[dict[str, np.ndarray]]:
    """This process's evaluation batches {"image", "label", "mask"} over the whole split, once.

    `info` as for `train_iterator`: passed by the trainer, so nothing is re-read per evaluation."""
    _local_batch(config.eval_batch_size, process_index, process_count, "eval_batch_size")
    info = info or sources.dataset_info(config.dataset)
    batches = EvalBatches(sources.open_split(config.dataset, split, info),
                          preprocessing(config.dataset), info.image_shape, config.eval_batch_size,
                          process_index, process_count)
    steps = grain.MapDataset.range(batches.num_batches)
    workers = num_workers(config.dataset)
    return _eval_batches(iter(_prefetched(steps.map(batches), workers)), batches, workers)


def _eval_batches(it: Iterator[dict[str, np.ndarray]], batches: EvalBatches,
                  num_workers: int) -> Iterator[dict[str, np.ndarray]]:
    for b in range(batches.num_batches):
        with _worker_deaths_reported(num_workers, f"evaluation batch {b}", batches.split):
            batch = next(it)
        yield batch
