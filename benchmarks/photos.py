"""Real photographs at ImageNet-like sizes, for the JPEG benchmark and tests (no download).

scikit-learn ships two 427×640 photographs (`load_sample_images`); each sample here is a random
window of one of them (60–100% of its sides) resized to 300–427 × 350–640 and re-encoded at JPEG
quality 90, which is the size and quality range of ImageNet's training JPEGs (smaller on
average: about 50 KB against ImageNet's ~110 KB).
"""
from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image


@functools.lru_cache(maxsize=4)
def photo_jpegs(n: int, quality: int = 90, seed: int = 0) -> tuple[bytes, ...]:
    """n JPEG files (bytes) of real photographs, a pure function of (n, quality, seed)."""
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        src = images[i % len(images)]
        h, w = int(rng.integers(300, 428)), int(rng.integers(350, 641))
        scale = rng.uniform(0.6, 1.0)
        ch, cw = int(src.shape[0] * scale), int(src.shape[1] * scale)
        top = int(rng.integers(0, src.shape[0] - ch + 1))
        left = int(rng.integers(0, src.shape[1] - cw + 1))
        window = Image.fromarray(src[top:top + ch, left:left + cw]).resize((w, h), Image.BILINEAR)
        buf = io.BytesIO()
        window.save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return tuple(out)


def decode_full(jpeg: bytes) -> np.ndarray:
    """The full-resolution decode of today's path (PIL, RGB)."""
    with Image.open(io.BytesIO(jpeg)) as im:
        return np.asarray(im.convert("RGB"))


def build_tiny_imagenet(data_dir: str, num_train: int, num_eval: int,
                        num_shards: int | None = None) -> None:
    """A TFDS `imagenet2012` of these photos (ArrayRecord, JPEG bytes stored as they are) in
    data_dir, through the registered builder with its download replaced (no TensorFlow);
    `num_shards` files per split (None: TFDS's choice, one file at these sizes)."""
    import inspect

    import tensorflow_datasets as tfds
    from etils import epath
    from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as b

    jpegs = photo_jpegs(num_train + num_eval)

    def split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, num_train),
                "validation": self._generate_examples(num_train, num_eval)}

    def generate_examples(self, first, count):
        for v in range(first, first + count):
            yield v, {"image": io.BytesIO(jpegs[v]), "label": v % 1000,
                      "file_name": f"{v}.JPEG"}

    cls = type("PhotoImagenet2012", (b.Builder,), {
        "name": "imagenet2012", "_split_generators": split_generators,
        "_generate_examples": generate_examples,
        "_get_pkg_dir_path": classmethod(lambda c: epath.Path(inspect.getfile(b)).parent),
    }, skip_registration=True)
    tfds.disable_progress_bar()
    cls(data_dir=data_dir, file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False,
                                                     num_shards=num_shards))
