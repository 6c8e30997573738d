"""Same recipe, two implementations: CIFAR-10 accuracy of igc-jax beside a faithful PyTorch run.

    python -m benchmarks.cifar_reference --data_dir=../shared/data/cifar10 \
        --root=runs/cifar_reference

Four (network, init) pairs, D=8, 15 epochs, batch 128, the spec §4 recipe (SGD Nesterov 0.9, L2
1e-4 on every parameter, lr 0.1 ×0.1 after 1/2, 3/4, 7/8 of the steps, pad 4 with the mean colour,
random crop, flip, per-channel normalisation, BatchNorm eps 2e-5 with the official momenta):
IGC-L24M2, RegConv-W16 and RegConv-W18 under the official He-normal init, and IGC-L24M2 under
PyTorch's default init. Each pair trains twice: through igc-jax's own command line
(`python -m igc_jax.main --config=experiments/cifar10_igc.py:<net>`) and by the PyTorch networks
of `benchmarks/torch_peer.py` in this file's `torch_train`, which shares no code with igc-jax.

Eight jobs, `--parallel` at a time (default: one per core, each pinned to its own core, so each
job sees one core whatever the others do). Every job resumes: igc-jax from its own checkpoints,
PyTorch from the checkpoint it writes after each epoch. A job is skipped when its result.json
exists under --root, or when benchmarks/results/cifar_reference.json (this script's own output,
committed) already holds its result; `--rerun` ignores the committed file. Each result records the
commit it was measured at. Rerun the same command until the table is complete; the jobs run
longest first (by their measured one-core durations), so the two cores finish together.
`benchmarks/cifar_reference_igcv3.py` runs IGCV3-D the same way, through this file's `Suite`.
Results (per-epoch test top-1, final, train images/s as the median over 50-step windows, so a
paused machine does not bias it):
benchmarks/results/cifar_reference.{json,md,png}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "experiments" / "cifar10_igc.py"
RUNS = (("L24M2,D8", "he_normal"), ("W16,D8", "he_normal"), ("W18,D8", "he_normal"),
        ("L24M2,D8", "torch_default"))
SIDES = ("igc_jax", "pytorch")
EPOCHS = 15
BATCH = 128
SEED = 0                        # the run's seed: `--seed` sets it (use_seed) before any job
WINDOW = 50                     # steps per images/s window
# Minutes per job on one core of this machine (measured), to run the longest jobs first.
MINUTES = {("igc_jax", "L24M2,D8"): 61, ("pytorch", "L24M2,D8"): 70, ("igc_jax", "W16,D8"): 31,
           ("pytorch", "W16,D8"): 16, ("igc_jax", "W18,D8"): 37, ("pytorch", "W18,D8"): 29}
# The recipe, stated once for the PyTorch side (igc-jax reads the same from its config file).
MEAN = (125.307, 122.950, 113.865)
STD = (62.993, 62.089, 66.705)
FILL = tuple(round(m) for m in MEAN)            # MXNet fill_value = round(mean_rgb)
PAD = 4
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-4
DECAYS = (1 / 2, 3 / 4, 7 / 8)


def use_seed(seed: int) -> None:
    """Make `seed` the seed of this process's jobs: igc-jax's `config.seed`, PyTorch's
    initialisation and data order, and the seed its results file is kept under."""
    global SEED
    SEED = seed


def results_name(suite: "Suite") -> str:
    """The stem of the suite's results files: <module> for seed 0, <module>_seed<N> otherwise,
    so a second seed adds files beside the first's instead of replacing them."""
    return suite.module if SEED == 0 else f"{suite.module}_seed{SEED}"


def job_dir(root: Path, side: str, net: str, init: str) -> Path:
    return root / f"{side}_{net.replace(',', '_')}_{init}"


# ----------------------------------------------------------------------------- PyTorch side

def load_cifar10(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) from the .npz files of ../shared/data/cifar10."""
    parts = [np.load(data_dir / f"train-0{i}.npz") for i in (0, 1)]
    test = np.load(data_dir / "test.npz")
    return (np.concatenate([p["image"] for p in parts]),
            np.concatenate([p["label"] for p in parts]), test["image"], test["label"])


def augment(images: np.ndarray, rng: np.random.Generator,
            fill: tuple[int, ...] = FILL) -> np.ndarray:
    """Pad PAD pixels of the mean colour `fill`, a random 32×32 window, a random horizontal
    flip."""
    n, h, w, c = images.shape
    padded = np.empty((n, h + 2 * PAD, w + 2 * PAD, c), np.uint8)
    padded[...] = np.asarray(fill, np.uint8)
    padded[:, PAD:PAD + h, PAD:PAD + w] = images
    dy, dx = rng.integers(0, 2 * PAD + 1, (2, n))
    flip = rng.random(n) < 0.5
    out = np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    out[flip] = out[flip, :, ::-1]
    return out


def to_tensor(images: np.ndarray, norm: tuple[tuple[float, ...], ...] = (MEAN, STD)):
    """(x − mean) / std per channel (`norm` = (mean, std)), NCHW channels-last."""
    import torch
    mean, std = norm
    x = (images.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def learning_rate(step: int, num_steps: int) -> float:
    """lr of update `step` (0-based): ×0.1 for each decay boundary b = int(num_steps·f) <= step
    (optax's piecewise_constant_schedule, which igc-jax uses)."""
    return LR * 0.1 ** sum(int(num_steps * f) <= step for f in DECAYS)


def test_top1(model, x_test: np.ndarray, y_test: np.ndarray,
              norm: tuple[tuple[float, ...], ...] = (MEAN, STD)) -> float:
    import torch
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x_test), 500):
            logits = model(to_tensor(x_test[i:i + 500], norm))
            correct += int((logits.argmax(1).numpy() == y_test[i:i + 500]).sum())
    return correct / len(x_test)


def torch_setup() -> None:
    """One thread per core this job may use, and the seed every PyTorch job starts from (set
    before the network is built: it draws the initial weights)."""
    import torch
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(SEED)


def torch_train(net: str, init: str, data_dir: Path, out: Path, epochs: int = EPOCHS) -> None:
    """Train the torch_peer network of `net` with the recipe above; resumes at its last epoch."""
    import torch
    from benchmarks import torch_peer
    from igc_jax.configs.networks import cifar_model

    torch_setup()
    model = torch_peer.build(dict(cifar_model(net), init=init)).to(
        memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True,
                          weight_decay=WEIGHT_DECAY)
    train_epochs(model, opt, lambda step, steps_per_epoch, num_steps: learning_rate(
        step, num_steps), data_dir, out, epochs, BATCH, (MEAN, STD))


def train_epochs(model, opt, lr: Callable[[int, int, int], float], data_dir: Path, out: Path,
                 epochs: int, batch: int, norm: tuple[tuple[float, ...], ...]) -> None:
    """The PyTorch training loop of every run here: `epochs` epochs of CIFAR-10 in batches of
    `batch` (a new order each epoch, the remainder dropped, as igc-jax), augmented with the mean
    colour of `norm` = (mean, std) and normalised by it, `lr(step, steps_per_epoch, num_steps)`
    for each update; the test top-1 after every epoch to out/metrics.jsonl, and a checkpoint it
    resumes from."""
    import torch
    import torch.nn.functional as F

    fill = tuple(round(m) for m in norm[0])          # MXNet fill_value = round(mean_rgb)
    x_train, y_train, x_test, y_test = load_cifar10(data_dir)
    steps_per_epoch = len(x_train) // batch
    num_steps = epochs * steps_per_epoch
    out.mkdir(parents=True, exist_ok=True)
    ckpt, log = out / "checkpoint.pt", out / "metrics.jsonl"
    start = 0
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        torch.set_rng_state(saved["torch_rng"])
        start = saved["epoch"]
        print(f"resumed {out.name} after epoch {start}", flush=True)
    for epoch in range(start, epochs):
        model.train()
        order = np.random.default_rng([SEED, epoch]).permutation(len(x_train))
        rng = np.random.default_rng([SEED, epoch, 1])
        rates, losses, t = [], [], time.perf_counter()
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            for group in opt.param_groups:
                group["lr"] = lr(step, steps_per_epoch, num_steps)
            idx = order[i * batch:(i + 1) * batch]
            x = to_tensor(augment(x_train[idx], rng, fill), norm)
            y = torch.from_numpy(y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if (i + 1) % WINDOW == 0:
                now = time.perf_counter()
                rates.append(WINDOW * batch / (now - t))
                t = now
        record = dict(epoch=epoch + 1, test_top1=test_top1(model, x_test, y_test, norm),
                      train_loss=float(np.mean(losses)), images_per_sec=float(np.median(rates)))
        with log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"{out.name}: {record}", flush=True)
        tmp = ckpt.with_suffix(".tmp")
        torch.save(dict(model=model.state_dict(), opt=opt.state_dict(), epoch=epoch + 1,
                        torch_rng=torch.get_rng_state()), tmp)
        os.replace(tmp, ckpt)


def torch_result(out: Path, epochs: int) -> dict | None:
    """The run's result once all its epochs are logged (the last record per epoch wins)."""
    log = out / "metrics.jsonl"
    if not log.exists():
        return None
    by_epoch = {r["epoch"]: r for r in map(json.loads, log.read_text().splitlines())}
    if len(by_epoch) < epochs:
        return None
    curve = [by_epoch[e]["test_top1"] for e in range(1, epochs + 1)]
    rate = float(np.median([by_epoch[e]["images_per_sec"] for e in range(1, epochs + 1)]))
    return dict(test_top1=curve, final=curve[-1], images_per_sec=rate)


# ----------------------------------------------------------------------------- igc-jax side

def igc_jax_command(config: str, workdir: Path, data_dir: Path, epochs: int,
                    overrides: dict[str, object]) -> list[str]:
    """`python -m igc_jax.main --config=<config>` on the CIFAR-10 arrays of `data_dir` for
    `epochs` epochs, seed SEED, train images/s logged every WINDOW steps, and the config fields
    of `overrides` set."""
    return [sys.executable, "-m", "igc_jax.main", f"--config={config}", f"--workdir={workdir}",
            "--config.dataset.name=arrays", f"--config.dataset.data_dir={data_dir}",
            f"--config.num_epochs={epochs}", f"--config.seed={SEED}",
            f"--config.log_every_steps={WINDOW}",
            *(f"--config.{field}={value}" for field, value in overrides.items())]


def jax_command(net: str, init: str, data_dir: Path, workdir: Path, epochs: int) -> list[str]:
    """The README's CIFAR command with this benchmark's overrides."""
    return igc_jax_command(f"{CONFIG}:{net}", workdir, data_dir, epochs,
                           {"batch_size": BATCH, "model.init": init})


def jax_result(workdir: Path, epochs: int) -> dict | None:
    """From metrics.jsonl: test top-1 after each epoch, median train images/s over the windows."""
    from igc_jax.training.metrics_log import read_metrics
    if not (workdir / "metrics.jsonl").exists():
        return None
    records = read_metrics(workdir / "metrics.jsonl")
    evals = {round(r["epoch"]): r for r in records if r["kind"] == "eval"}
    if len(evals) < epochs:
        return None
    curve = [evals[e]["top1"] for e in range(1, epochs + 1)]
    rates = [r["images_per_sec"] for r in records if r["kind"] == "train"][1:]  # 1st: compile
    return dict(test_top1=curve, final=curve[-1], images_per_sec=float(np.median(rates)))


# ----------------------------------------------------------------------------- the schedule

def job_command(side: str, net: str, init: str, data_dir: Path, out: Path, epochs: int,
                suite: Suite | None = None) -> list[str]:
    suite = suite or IGCV1
    if side == "igc_jax":
        return suite.jax_command(net, init, data_dir, out, epochs)
    return [sys.executable, "-m", f"benchmarks.{suite.module}", "--torch_job", net, init,
            f"--data_dir={data_dir}", f"--out={out}", f"--epochs={epochs}", f"--seed={SEED}"]


def git_commit() -> str:
    """The checkout's commit (with '+dirty' for uncommitted changes), recorded with each result."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+dirty" if git(
        "status", "--porcelain", "--untracked-files=no") else "")


def result(side: str, out: Path, epochs: int) -> dict | None:
    """The job's result from its run directory, saved as result.json once complete."""
    saved = out / "result.json"
    if saved.exists():
        return json.loads(saved.read_text())
    found = (jax_result if side == "igc_jax" else torch_result)(out, epochs)
    if found is not None:
        found["commit"] = (out / "commit").read_text().strip() if (out / "commit").exists() \
            else "unknown"
        saved.write_text(json.dumps(found, indent=1))
    return found


def committed_results(epochs: int, path: Path = RESULTS / "cifar_reference.json",
                      batch: int = BATCH) -> dict:
    """(side, net, init) -> result from this script's committed output, for the same recipe."""
    if not path.exists():
        return {}
    summary = json.loads(path.read_text())
    if (summary["epochs"], summary["batch"], summary["seed"]) != (epochs, batch, SEED):
        return {}
    return {(side, r["net"], r["init"]): dict(r[side], source=path.name)
            for r in summary["rows"] for side in SIDES if r.get(side)}


def job_result(job: tuple[str, str, str], root: Path, epochs: int, known: dict) -> dict | None:
    """A run directory's result first, else the committed one."""
    return result(job[0], job_dir(root, *job), epochs) or known.get(job)


def run_jobs(jobs: list[tuple[str, str, str]], data_dir: Path, root: Path, epochs: int,
             parallel: int, known: dict, suite: Suite | None = None) -> None:
    """Run the jobs without a result, longest first, `parallel` at a time, each pinned to its
    own cores."""
    suite = suite or IGCV1
    cpus = sorted(os.sched_getaffinity(0))
    per_job = max(len(cpus) // parallel, 1)
    slots = [cpus[i * per_job:(i + 1) * per_job] or cpus for i in range(parallel)]
    pending = sorted((j for j in jobs if job_result(j, root, epochs, known) is None),
                     key=lambda j: -suite.minutes[j[0], j[1]])
    commit = git_commit()
    running: dict[int, tuple[subprocess.Popen, tuple, object]] = {}
    print(f"{len(pending)} of {len(jobs)} jobs to run, {parallel} at a time on cores {slots}",
          flush=True)
    while pending or running:
        for slot in range(parallel):
            if slot not in running and pending:
                job = pending.pop(0)
                out = job_dir(root, *job)
                out.mkdir(parents=True, exist_ok=True)
                if not (out / "commit").exists():
                    (out / "commit").write_text(commit + "\n")
                cmd = job_command(*job, data_dir, out, epochs, suite)
                print(f"[core {slots[slot]}] start {out.name}: {' '.join(cmd)}", flush=True)
                log = (out / "job.log").open("a")
                proc = subprocess.Popen(
                    cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                    preexec_fn=lambda cores=tuple(slots[slot]): os.sched_setaffinity(0, cores))
                running[slot] = (proc, job, log)
        time.sleep(5)
        for slot, (proc, job, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[slot]
                name = job_dir(root, *job).name
                state = "done" if result(job[0], job_dir(root, *job), epochs) else "INCOMPLETE"
                print(f"{name}: exit {proc.returncode}, {state}", flush=True)


# ----------------------------------------------------------------------------- the report

def report(root: Path, epochs: int, known: dict, out: Path = RESULTS,
           suite: Suite | None = None) -> dict:
    """Write <results_name>.{json,md,png} from whatever results exist; returns the json."""
    from igc_jax.configs.networks import network_name
    from igc_jax.models import build_model
    import jax
    import jax.numpy as jnp

    suite = suite or IGCV1
    rows = []
    for net, init in suite.runs:
        cfg = suite.model_config(net, init)
        variables = jax.eval_shape(lambda: build_model(cfg, num_classes=10).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))
        params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables["params"]))
        row = dict(network=network_name(cfg), net=net, init=init, params=params)
        for side in SIDES:
            row[side] = job_result((side, net, init), root, epochs, known)
        rows.append(row)
    summary = dict(epochs=epochs, batch=suite.batch, seed=SEED, rows=rows)
    if suite.ordering is not None:
        summary["ordering"] = suite.ordering(rows)
    out.mkdir(parents=True, exist_ok=True)
    name = results_name(suite)
    (out / f"{name}.json").write_text(json.dumps(summary, indent=1))
    (out / f"{name}.md").write_text(markdown(summary, suite))
    plot(rows, out / f"{name}.png", suite.plot_title)
    return summary


def ordering(rows: list[dict]) -> dict:
    """Per side, init and RegConv net: is IGC-L24M2's final top-1 at least the RegConv net's (the
    paper's claim; the RegConv nets run under he_normal only)? None where a run is missing."""
    found = {}
    for side in SIDES:
        finals = {(r["net"], r["init"]): r[side]["final"] for r in rows if r[side]}
        for init in ("he_normal", "torch_default"):
            igc = finals.get(("L24M2,D8", init))
            for reg in ("W16,D8", "W18,D8"):
                other = finals.get((reg, "he_normal"))
                key = f"{side}/{init}: IGC-L24M2 >= RegConv-{reg.split(',')[0]}"
                found[key] = None if igc is None or other is None else bool(igc >= other)
    return found


def provenance(res: dict) -> str:
    """The commit a result was measured at; results from before commits were recorded say so."""
    commit = res.get("commit", "not recorded (a run from before this script recorded commits)")
    return commit + (f", reused from {res['source']}" if res.get("source") else "")


def intro(summary: dict) -> str:
    """The report's first paragraph: what ran, and the command."""
    return (f"CIFAR-10 (real), plain D=8, {summary['epochs']} epochs, batch {summary['batch']}, "
            "the spec §4 recipe (mean-colour padding); igc-jax through its command line beside "
            "the PyTorch peer (benchmarks/torch_peer.py), each job pinned to one core of this "
            "shared 2-core machine. `python -m benchmarks.cifar_reference`.")


def markdown(summary: dict, suite: Suite | None = None) -> str:
    suite = suite or IGCV1
    seed = summary.get("seed", 0)
    lines = [suite.intro(summary) + (f" Seed {seed} (`--seed={seed}`)." if seed else ""), "",
             "| network | init | params | igc-jax final | PyTorch final | igc-jax − PyTorch "
             "| igc-jax img/s | PyTorch img/s |", "|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        j, t = r["igc_jax"], r["pytorch"]
        fmt = (lambda x, k: f"{100 * x[k]:.2f}%" if x else "not run yet")
        diff = f"{100 * (j['final'] - t['final']):+.2f}" if j and t else "–"
        ips = (lambda x: f"{x['images_per_sec']:.0f}" if x else "–")
        lines.append(f"| {r['network']} | {r['init']} | {r['params']:,} | {fmt(j, 'final')} | "
                     f"{fmt(t, 'final')} | {diff} | {ips(j)} | {ips(t)} |")
    lines += ["", "images/s compare only between jobs that ran side by side, in the same "
              "session (see where each result comes from): this machine's speed differs between "
              "sessions.", "",
              "Test top-1 after each epoch:", ""]
    for r in summary["rows"]:
        for side in SIDES:
            if r[side]:
                curve = " ".join(f"{100 * a:.1f}" for a in r[side]["test_top1"])
                lines.append(f"- {r['network']} ({r['init']}), {side}: {curve}")
    lines += ["", "Where each result comes from (the commit its run started at):", ""]
    for r in summary["rows"]:
        for side in SIDES:
            if r[side]:
                lines.append(f"- {r['network']} ({r['init']}), {side}: {provenance(r[side])}")
    if "ordering" in summary:
        lines += ["", "The paper's ordering, final top-1 (the RegConv nets under he_normal):", ""]
        lines += [f"- {k}: {'not measured' if v is None else 'yes' if v else 'no'}"
                  for k, v in summary["ordering"].items()]
    lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, r in enumerate(rows):
        for side, style in zip(SIDES, ("-", "--")):
            if r[side]:
                acc = r[side]["test_top1"]
                ax.plot(range(1, len(acc) + 1), [100 * a for a in acc], style, color=f"C{i}",
                        label=f"{r['network']} {r['init']} ({side})")
    ax.set(xlabel="epoch", ylabel="test top-1 (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- the suites

@dataclasses.dataclass(frozen=True)
class Suite:
    """What differs between the benchmarks of this kind (IGCV1's here, IGCV3's in
    benchmarks/cifar_reference_igcv3.py); running, resuming and reporting the jobs is shared."""
    module: str                 # `python -m benchmarks.<module>`, results/<module>.{json,md,png}
    description: str            # --help's first line
    runs: tuple[tuple[str, str], ...]           # (net, init): each trains on both SIDES
    epochs: int
    batch: int
    minutes: dict[tuple[str, str], float]       # (side, net) -> one-core minutes, longest first
    model_config: Callable[[str, str], dict]    # (net, init) -> igc-jax's model config
    jax_command: Callable[[str, str, Path, Path, int], list[str]]
    torch_train: Callable[[str, str, Path, Path, int], None]
    intro: Callable[[dict], str]                # the report's first paragraph
    plot_title: str
    ordering: Callable[[list[dict]], dict] | None = None


def cifar_model_config(net: str, init: str) -> dict:
    from igc_jax.configs.networks import cifar_model
    return dict(cifar_model(net), init=init)


IGCV1 = Suite("cifar_reference", __doc__.splitlines()[0], RUNS, EPOCHS, BATCH, MINUTES,
              cifar_model_config, jax_command, torch_train, intro,
              "CIFAR-10, D=8: igc-jax (solid) vs PyTorch (dashed)", ordering)


def main(argv: list[str] | None = None, suite: Suite = IGCV1) -> None:
    p = argparse.ArgumentParser(description=suite.description)
    p.add_argument("--data_dir", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10")
    p.add_argument("--root", type=Path, help="run directories (default runs/<results name>)")
    p.add_argument("--epochs", type=int, default=suite.epochs)
    p.add_argument("--parallel", type=int, default=min(len(os.sched_getaffinity(0)), 2))
    p.add_argument("--report_only", action="store_true", help="write the results, run nothing")
    p.add_argument("--rerun", action="store_true",
                   help=f"ignore the results in benchmarks/results/{suite.module}.json (or "
                        "its seed's file)")
    p.add_argument("--seed", type=int, default=0,
                   help="every job's seed; a seed other than 0 writes "
                        f"benchmarks/results/{suite.module}_seed<N>.{{json,md,png}}")
    p.add_argument("--torch_job", nargs=2, metavar=("NET", "INIT"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.seed < 0:
        print(f"error: --seed must be 0 or more, not {args.seed}", file=sys.stderr)
        raise SystemExit(2)
    use_seed(args.seed)
    if args.torch_job:
        suite.torch_train(*args.torch_job, args.data_dir.resolve(), args.out, args.epochs)
        return
    if not (args.data_dir / "test.npz").exists():
        print(f"error: no CIFAR-10 arrays in {args.data_dir} (see ../shared/data/cifar10)",
              file=sys.stderr)
        raise SystemExit(2)
    jobs = [(side, net, init) for net, init in suite.runs for side in SIDES]
    root = (args.root or ROOT / "runs" / results_name(suite)).resolve()
    known = {} if args.rerun else committed_results(
        args.epochs, RESULTS / f"{results_name(suite)}.json", suite.batch)
    if not args.report_only:
        run_jobs(jobs, args.data_dir.resolve(), root, args.epochs, args.parallel, known, suite)
    summary = report(root, args.epochs, known, suite=suite)
    print(markdown(summary, suite))


if __name__ == "__main__":
    main()
