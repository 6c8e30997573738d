"""Input pipeline: TFDS / local arrays / digits sources, spec §4 preprocessing, grain batching.

Public API (the trainer codes against it):
  dataset_info(config.dataset) -> DatasetInfo(name, num_classes, image_shape, num_train, num_eval)
      (computed once by the trainer and passed to the two below)
  check_labels(config.dataset): labels in range, where they can be read apart from the images
  train_iterator(config, info, process_index=, process_count=) -> TrainIterator
      (get_state / set_state)
  eval_batches(config, info, process_index=, process_count=, split="test") -> iterator of
      {"image", "label", "mask"}
Every data problem raises DataError (an igc_jax.errors.UserError) with a one-line message.
"""
from igc_jax.data.pipeline import TrainIterator, eval_batches, train_iterator
from igc_jax.data.augment import AUGMENTATIONS
from igc_jax.data.normalization import NORMALIZATION
from igc_jax.data.sources import DATASETS, DataError, DatasetInfo, check_labels, dataset_info

__all__ = ["AUGMENTATIONS", "DATASETS", "DataError", "DatasetInfo", "NORMALIZATION",
           "TrainIterator", "check_labels", "dataset_info", "eval_batches", "train_iterator"]
