"""ImageNet preprocessing throughput on real photographs: previous path, this one, tf.data.

Run through `python -m benchmarks.input_pipeline --dataset=imagenet`. Photos: benchmarks/photos.py
(scikit-learn's two sample photos cut to ImageNet-like sizes, JPEG quality 90). Per core:
one thread, images per second of wall time and per CPU-second of the process, for
  previous   the path before this change: PIL decode at full resolution, PIL resize of the crop
             box on the whole image, colour jitter then normalisation as separate numpy passes
  current    `Preprocessing.train/eval` on the encoded bytes (simplejpeg decode at the largest
             DCT reduction that keeps the box >= the output, crop before resize, one fused
             colour matrix), augment imagenet_inception
  imagenet_mxnet  the ImageNet configs' default since issue 18: the authors' MXNet recipe
             (one affine resample per crop, HSL jitter in OpenCV's 8-bit HLS) as it is now:
             OpenCV's cvtColor and table lookups for the jitter and the normalisation, the
             resample and flip by igc_jax.data.native's C++ kernel (PIL's arithmetic bit for
             bit) on the decoded pixels in place (issue 26)
  mxnet previous  the same recipe as before issue 26 (`previous_mxnet_train`): numpy's
             emulation of the 8-bit HLS conversion, numpy's flip and normalisation
  tf.data    TensorFlow's `decode_and_crop_jpeg` with the same crop boxes, bilinear resize, flip,
             the same jitter and normalisation in TF ops; one thread (tf.data private pool of 1,
             intra/inter-op parallelism 1). Skipped with a note when TensorFlow is absent.
Then the total of `train_iterator` (batches of 64 from a tiny TFDS imagenet2012 of the photos,
the trainer's real path with the ImageNet configs' augmentation, imagenet_mxnet) with
dataset.num_workers = 0 (threads), 1 and 2.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.photos import build_tiny_imagenet, decode_full, photo_jpegs
from igc_jax import configs, data
from igc_jax.data import jpeg, normalization, pipeline, preprocess, randomness
from igc_jax.data.augment import imagenet, inception, mxnet

SIZE = 224
NORM = "imagenet"
JITTER = inception.DEFAULT_COLOR_JITTER


def previous_train(jpegs, u) -> np.ndarray:
    """The train preprocessing before this change (commit 2e41693), kept here to compare."""
    crops = []
    for j, ui in zip(jpegs, u):
        image = decode_full(j)
        top, left, ch, cw = inception.random_crop_box(image.shape[0], image.shape[1], ui)
        x = np.asarray(Image.fromarray(image).resize(
            (SIZE, SIZE), Image.BILINEAR, box=(left, top, left + cw, top + ch)))
        crops.append(x[:, ::-1] if ui[randomness.U_FLIP] < 0.5 else x)
    return normalization.normalize(inception.color_jitter(np.stack(crops), u, JITTER), NORM)


def previous_mxnet_train(jpegs, u) -> np.ndarray:
    """The MXNet recipe before issue 26 (commit 72fb0c3), kept here to compare: the same crops,
    then the HSL jitter in numpy float32 (an emulation of OpenCV's 8-bit HLS that rounded L half
    to even, where OpenCV rounds it up, and made white NaN) and numpy normalisation."""
    crops = []
    for j, ui in zip(jpegs, u):
        h, w = jpeg.encoded_size(j)
        top, left, bh, bw = mxnet.mxnet_crop_box(h, w, ui, SIZE)
        pixels = jpeg.decode(j, 3, jpeg.dct_reduction(bh, bw, SIZE))
        sy, sx = pixels.shape[0] / h, pixels.shape[1] / w
        top, left, bh, bw = top * sy, left * sx, bh * sy, bw * sx
        out = np.asarray(Image.fromarray(pixels).transform(
            (SIZE, SIZE), Image.AFFINE, (bw / SIZE, 0.0, left, 0.0, bh / SIZE, top),
            resample=Image.BILINEAR, fillcolor=mxnet.MXNET_FILL))
        crops.append(out[:, ::-1] if ui[randomness.U_FLIP] < 0.5 else out)
    x = _previous_hsl_jitter(np.stack(crops), u).astype(np.float32)
    mean, std = normalization.NORMALIZATION["imagenet_igc_mxnet"]
    x -= np.asarray(mean, np.float32)
    x *= np.float32(1.0) / np.asarray(std, np.float32)
    return x


def _previous_hsl_jitter(images: np.ndarray, u: np.ndarray) -> np.ndarray:
    out = images.copy()
    bounds = np.asarray([180, 255, 255], np.float32)
    for i, (dh, ds, dl) in enumerate(mxnet.mxnet_hsl_offsets(u)):
        if dh or ds or dl:
            hls = _previous_rgb_to_hls8(images[i])
            hls += np.asarray([dh, dl, ds], np.float32)
            np.clip(hls, 0, bounds, out=hls)
            rgb = _previous_hls8_to_rgb(hls)
            np.round(rgb, out=rgb)
            np.clip(rgb, 0, 255, out=rgb)
            out[i] = rgb
    return out


def _previous_rgb_to_hls8(x: np.ndarray) -> np.ndarray:
    shape = x.shape
    r, g, b = np.ascontiguousarray(x.reshape(-1, 3).T, dtype=np.float32)
    vmax, vmin = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    diff, total = vmax - vmin, vmax + vmin
    flat = diff == 0
    inv = np.float32(60) / np.where(flat, np.float32(1), diff)
    hue = np.where(vmax == b, r - g, b - r)
    hue *= inv
    hue += np.where(vmax == b, np.float32(240), np.float32(120))
    red = vmax == r
    hue[red] = ((g - b) * inv)[red]
    hue[hue < 0] += 360
    hue[flat] = 0
    out = np.empty((r.size, 3), np.float32)
    np.multiply(hue, np.float32(0.5), out=out[:, 0])
    np.multiply(total, np.float32(0.5), out=out[:, 1])
    denominator = np.where(total < 255, np.maximum(total, 1), 510 - total)
    with np.errstate(invalid="ignore"):
        np.divide(diff * np.float32(255), denominator, out=out[:, 2])
    np.round(out, out=out)
    return out.reshape(shape)


def _previous_hls8_to_rgb(hls: np.ndarray) -> np.ndarray:
    shape = hls.shape
    h, light, sat = np.ascontiguousarray(hls.reshape(-1, 3).T, dtype=np.float32)
    light = light * np.float32(1 / 255)
    a = sat * np.float32(1 / 255) * np.minimum(light, 1 - light)
    h15 = h * np.float32(1 / 15)
    out = np.empty((h.size, 3), np.float32)
    k, t = np.empty_like(h15), np.empty_like(h15)
    for c, n in enumerate((0.0, 8.0, 4.0)):
        np.add(h15, np.float32(n), out=k)
        k[k >= 12] -= 12
        np.subtract(9, k, out=t)
        np.minimum(np.subtract(k, 3, out=k), t, out=t)
        np.clip(t, -1, 1, out=t)
        np.multiply(a, t, out=t)
        np.subtract(light, t, out=out[:, c])
    out *= np.float32(255)
    return out.reshape(shape)


def previous_eval(jpegs) -> np.ndarray:
    """The eval preprocessing before this change: full decode, whole-image resize, centre crop."""
    out = []
    for j in jpegs:
        image = decode_full(j)
        new_h, new_w = imagenet.eval_resize_shape(image.shape[0], image.shape[1], SIZE)
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
        top, left = (new_h - SIZE) // 2, (new_w - SIZE) // 2
        out.append(resized[top:top + SIZE, left:left + SIZE])
    return normalization.normalize(np.stack(out), NORM)


def _interleaved(fns: dict[tuple[str, str], object], n: int, rounds: int) -> dict:
    """{kind: {path: rates}}: every fn() once per round, in turn, so that the load of a shared
    machine falls on all paths alike; medians of images/s of wall time and of CPU time."""
    for fn in fns.values():
        fn()                                                   # warm-up
    wall: dict = {k: [] for k in fns}
    cpu: dict = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[key].append(n / (time.perf_counter() - t))
            cpu[key].append(n / (time.process_time() - c))
    out: dict = {}
    for (kind, path) in fns:
        out.setdefault(kind, {})[path] = {
            "images_per_s": round(statistics.median(wall[kind, path]), 1),
            "images_per_cpu_s": round(statistics.median(cpu[kind, path]), 1)}
    return out


def tf_pipelines(jpegs, u, batch: int):
    """(train, eval) callables running one tf.data pass over the photos; None without TF."""
    try:
        import tensorflow as tf
    except ImportError:
        return None
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    boxes = np.asarray([inception.random_crop_box(*jpeg.encoded_size(j), ui)
                        for j, ui in zip(jpegs, u)], np.int32)
    flips = u[:, randomness.U_FLIP] < 0.5
    factors = (1.0 + JITTER * (2.0 * u[:, randomness.U_JITTER:randomness.U_JITTER + 3]
                               - 1.0)).astype(np.float32)
    mean, std = (tf.constant(v, tf.float32) for v in normalization.NORMALIZATION[NORM])
    luma = tf.constant([0.299, 0.587, 0.114], tf.float32)
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1

    def train_map(jpeg, box, flip, f):
        x = tf.image.decode_and_crop_jpeg(jpeg, box, channels=3)
        x = tf.image.resize(x, [SIZE, SIZE], method="bilinear")
        x = tf.cond(flip, lambda: tf.image.flip_left_right(x), lambda: x)
        x = x * f[0]
        m = tf.reduce_mean(tf.tensordot(x, luma, 1))
        x = (x - m) * f[1] + m
        g = tf.tensordot(x, luma, 1)[..., None]
        x = tf.clip_by_value((x - g) * f[2] + g, 0.0, 255.0)
        return (x - mean) / std

    def eval_map(jpeg):
        x = tf.image.decode_jpeg(jpeg, channels=3)
        h, w = tf.shape(x)[0], tf.shape(x)[1]
        short = round(SIZE * imagenet.EVAL_RESIZE)
        scale = short / tf.cast(tf.minimum(h, w), tf.float32)
        new = tf.maximum(tf.cast(tf.round(tf.cast([h, w], tf.float32) * scale), tf.int32), short)
        x = tf.image.resize(x, new, method="bilinear", antialias=True)
        top, left = (new[0] - SIZE) // 2, (new[1] - SIZE) // 2
        x = x[top:top + SIZE, left:left + SIZE]
        return (x - mean) / std

    data_j = tf.constant(list(jpegs))
    train = (tf.data.Dataset.from_tensor_slices((data_j, boxes, flips, factors))
             .map(train_map, num_parallel_calls=1).batch(batch).with_options(options))
    evals = (tf.data.Dataset.from_tensor_slices(data_j).map(eval_map, num_parallel_calls=1)
             .batch(batch).with_options(options))

    def drain(ds):
        for _ in ds:
            pass

    return (lambda: drain(train)), (lambda: drain(evals)), tf.__version__


def _tree_cpu_seconds(pid: int | str = "self") -> float:
    """CPU seconds (user + system) of a process and all its living descendants, from /proc
    (the workers are alive while measured, so getrusage(RUSAGE_CHILDREN) cannot see them)."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _tree_cpu_seconds(child)
    except (OSError, IndexError):            # a process that just ended
        pass
    return total


def pipeline_rate(data_dir: str, workers: int, batches: int) -> dict:
    """images/s of train_iterator (batch 64, the photos' TFDS) with `workers` processes."""
    c = configs.imagenet_recipe("IGC-L4M32+Ident.")
    c.dataset.update(data_dir=data_dir, num_workers=workers)
    c.batch_size = 64
    info = data.dataset_info(c.dataset)
    it = data.train_iterator(c, info, process_index=0, process_count=1)
    t = time.perf_counter()
    next(it)
    first = time.perf_counter() - t
    for _ in range(2):
        next(it)                                  # workers reach their steady state
    t, cpu = time.perf_counter(), _tree_cpu_seconds()
    for _ in range(batches):
        next(it)
    wall, cpu = time.perf_counter() - t, _tree_cpu_seconds() - cpu
    images = batches * c.batch_size
    return {"workers": workers, "images_per_s": round(images / wall, 1),
            "images_per_cpu_s": round(images / cpu, 1) if cpu > 0 else None,
            "cores_used": round(cpu / wall, 2), "first_batch_s": round(first, 2)}


def run(results_dir: Path, n: int = 128, rounds: int = 7, batches: int = 24) -> dict:
    jpegs = photo_jpegs(n)
    u = randomness.example_uniforms(0, 0, np.arange(n), randomness.NUM_UNIFORMS)
    prep = preprocess.Preprocessing("imagenet_inception", NORM, SIZE, JITTER)
    env = {"cpus": os.cpu_count(), "affinity_cpus": pipeline.available_cpus(),
           "load_average": [round(x, 2) for x in os.getloadavg()],
           "python": platform.python_version(), "numpy": np.__version__,
           "pillow": importlib.metadata.version("pillow"),
           "simplejpeg": importlib.metadata.version("simplejpeg"),
           "grain": importlib.metadata.version("grain"), "platform": platform.platform()}
    sizes = [jpeg.encoded_size(j) for j in jpegs]
    photos = {"count": n, "mean_kb": round(float(np.mean([len(j) for j in jpegs])) / 1000, 1),
              "height": [min(s[0] for s in sizes), max(s[0] for s in sizes)],
              "width": [min(s[1] for s in sizes), max(s[1] for s in sizes)],
              "quality": 90}
    tf_fns = tf_pipelines(jpegs, u, 64)
    mxnet_prep = preprocess.Preprocessing("imagenet_mxnet", "imagenet_igc_mxnet", SIZE)
    fns = {("train", "previous"): lambda: previous_train(jpegs, u),
           ("train", "current"): lambda: prep.train(list(jpegs), u),
           ("train", "imagenet_mxnet"): lambda: mxnet_prep.train(list(jpegs), u),
           ("train", "mxnet previous"): lambda: previous_mxnet_train(jpegs, u)}
    if tf_fns is not None:
        fns["train", "tf.data"] = tf_fns[0]
    fns.update({("eval", "previous"): lambda: previous_eval(jpegs),
                ("eval", "current"): lambda: prep.eval(list(jpegs))})
    if tf_fns is not None:
        fns["eval", "tf.data"] = tf_fns[1]
        env["tensorflow"] = tf_fns[2]
    tf_note = None if tf_fns else "TensorFlow is not installed: the tf.data column is skipped"
    per_core = _interleaved(fns, n, rounds)
    print(json.dumps(per_core), flush=True)

    totals = []
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_imagenet(tmp, 256, 8)
        for w in (0, 1, 2):
            totals.append(pipeline_rate(tmp, w, batches))
            print(json.dumps(totals[-1]), flush=True)

    one = next(t["images_per_s"] for t in totals if t["workers"] == 1)
    two = next(t["images_per_s"] for t in totals if t["workers"] == 2)
    train = per_core["train"]
    checks = {
        "train_current_vs_previous_per_cpu_s": round(
            train["current"]["images_per_cpu_s"] / train["previous"]["images_per_cpu_s"], 2),
        "train_mxnet_vs_previous_per_cpu_s": round(
            train["imagenet_mxnet"]["images_per_cpu_s"]
            / train["mxnet previous"]["images_per_cpu_s"], 2),
        "train_mxnet_vs_tf_per_cpu_s": round(
            train["imagenet_mxnet"]["images_per_cpu_s"] / train["tf.data"]["images_per_cpu_s"], 2)
        if "tf.data" in train else None,
        "train_current_vs_tf_per_cpu_s": round(
            train["current"]["images_per_cpu_s"] / train["tf.data"]["images_per_cpu_s"], 2)
        if "tf.data" in train else None,
        "two_workers_vs_one": round(two / one, 2),
        "two_workers_vs_one_per_cpu_s": round(
            totals[2]["images_per_cpu_s"] / totals[1]["images_per_cpu_s"], 2),
    }
    result = {"benchmark": "input_pipeline_imagenet", "environment": env, "photos": photos,
              "output_size": SIZE, "rounds": rounds, "per_core": per_core,
              "pipeline_batches": batches, "pipeline_batch_size": 64, "pipeline": totals,
              "checks": checks, "tf_note": tf_note}
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "input_pipeline_imagenet.json").write_text(json.dumps(result, indent=1) + "\n")
    (results_dir / "input_pipeline_imagenet.md").write_text(markdown(result))
    return result


def markdown(r: dict) -> str:
    env, p = r["environment"], r["photos"]
    lines = [
        "# ImageNet input pipeline on real photographs (224×224 crops)", "",
        f"Photos: {p['count']} JPEGs (quality {p['quality']}, {p['height'][0]}–{p['height'][1]} "
        f"× {p['width'][0]}–{p['width'][1]} px, {p['mean_kb']} KB on average) from "
        "scikit-learn's sample photos (benchmarks/photos.py). Machine: "
        f"{env['affinity_cpus']} CPU cores shared with other jobs (load average "
        f"{env['load_average']} at the start), Python {env['python']}, numpy {env['numpy']}, "
        f"Pillow {env['pillow']}, simplejpeg {env['simplejpeg']}, grain {env['grain']}"
        + (f", TensorFlow {env['tensorflow']}" if "tensorflow" in env else "") + ".", "",
        "## Per core (one thread, one BLAS thread; the paths in turn, median of "
        f"{r['rounds']} rounds of {p['count']} images)", "",
        "| preprocessing | path | images/s (wall) | images per CPU-second |",
        "| --- | --- | ---: | ---: |",
    ]
    for kind, paths in r["per_core"].items():
        for name, v in paths.items():
            lines.append(f"| {kind} | {name} | {v['images_per_s']} | {v['images_per_cpu_s']} |")
    if r["tf_note"]:
        lines += ["", r["tf_note"] + "."]
    lines += ["", f"## The trainer's path: `train_iterator`, batch {r['pipeline_batch_size']}, "
              f"{r['pipeline_batches']} batches after 3 warm-up ones", "",
              "| dataset.num_workers | images/s | images per CPU-second (all processes) | "
              "cores used | first batch (s) |", "| ---: | ---: | ---: | ---: | ---: |"]
    for t in r["pipeline"]:
        lines.append(f"| {t['workers']} | {t['images_per_s']} | {t['images_per_cpu_s']} | "
                     f"{t['cores_used']} | {t['first_batch_s']} |")
    c = r["checks"]
    lines += ["", "## Against the targets", "",
              "- train, current / previous (per CPU-second): "
              f"{c['train_current_vs_previous_per_cpu_s']}× (target ≥ 2×)",
              f"- train, current / tf.data (per CPU-second): {c['train_current_vs_tf_per_cpu_s']}×"
              " (target ≥ 1×)",
              "- train, imagenet_mxnet / mxnet previous (per CPU-second): "
              f"{c['train_mxnet_vs_previous_per_cpu_s']}× (issue 26's target ≥ 2×)",
              "- train, imagenet_mxnet / tf.data's Inception pipeline (per CPU-second): "
              f"{c['train_mxnet_vs_tf_per_cpu_s']}× (issue 26's target ≥ 1×)",
              f"- 2 workers / 1 worker: {c['two_workers_vs_one']}× in images/s (target ≥ 1.6×), "
              f"{c['two_workers_vs_one_per_cpu_s']}× in images per CPU-second", "",
              "0 workers: grain's two read threads in the training process (the JPEG decode "
              "and the resample, C++ through ctypes or PIL, release the GIL, so they keep up "
              "to 2 cores busy). Workers "
              "are spawned processes of one read thread each; their first batch includes their "
              "start. Other jobs shared the cores while this ran (the load average above): "
              "the paths run in turn, so the load falls on all alike. Cores used: CPU-seconds "
              "of the training process and its "
              "workers per second; images per CPU-second staying flat from 1 to 2 workers means "
              "no per-worker overhead, so W workers reach W times one worker's rate when W free "
              "cores are there (cores used shows whether they were).", ""]
    return "\n".join(lines)
