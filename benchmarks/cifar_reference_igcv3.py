"""Same recipe, two implementations: CIFAR-10 accuracy of igc-jax's IGCV3-D beside pytorchcv's.

    python -m benchmarks.cifar_reference_igcv3 --data_dir=../shared/data/cifar10 \
        --root=runs/cifar_reference_igcv3

IGCV3-D width 1.0 (spec §7), the network of `experiments/cifar10_igcv3.py`: the ImageNet network
unchanged on 32×32 images with 10 classes, 2,223,498 parameters. It trains twice, with that
config's recipe: through igc-jax's own command line (`python -m igc_jax.main
--config=experiments/cifar10_igcv3.py:1.0`), and as pytorchcv's `igcv3_w1(num_classes=10)` in
this file's `torch_train`. The recipe, as igc-jax implements it and the PyTorch side repeats it:
- SGD, momentum 0.9, not Nesterov; L2 4e-5 added to the gradient of every parameter (convs,
  BatchNorm scales and biases, classifier), before the momentum (optax `add_decayed_weights`,
  torch's `weight_decay`); batch 96, the remainder of each epoch dropped (520 steps per epoch);
- lr 0.045 ×d at every epoch boundary (staircase: constant within an epoch), no warmup;
- MXNet's Xavier init (`model.init=mxnet_xavier`): every conv and the classifier N(0, 2/fan_in),
  the classifier's bias 0, BatchNorm scale 1 and bias 0;
- BatchNorm eps 1e-5, running averages ×0.9 + 0.1·batch (MXNet's momentum 0.9) of the batch mean
  and the biased batch variance, as MXNet and igc-jax (torch averages the unbiased variance,
  n/(n−1) larger: 1% at batch 96 on the 1×1 maps of the last stages; `mxnet_running_var` undoes
  it);
- mean subtraction only (CIFAR-10's mean, std 1); pad 4 with the rounded mean colour
  (125, 123, 114), random 32×32 crop, random horizontal flip.
pytorchcv ends its features with AvgPool2d(7), the 7×7 map of a 224² input; at 32² the head's
map is 1×1, which AvgPool2d(7) rejects, so the PyTorch side pools with AdaptiveAvgPool2d(1):
the global average pool of igc-jax and of the authors' symbol.

The official schedule is 480 epochs at d = 0.98. For this CPU both sides compress it into
E = EPOCHS = 8 epochs (about 45 minutes per job on one core) with d = 0.98^(480/E) = 0.98^60 ≈
0.2976 (`--epochs=E` gives 0.98^(480/E)): epoch e (0-based) trains at 0.045·0.98^(480·e/E), the
official rate of epoch 480·e/E, and the rate falls over the run by the official 480 epochs'
factor, 0.98^480 ≈ 6e-5 (the last epoch trains at 0.045·0.98^420 ≈ 9e-6).

Two jobs, run, resumed, skipped (benchmarks/results/cifar_reference_igcv3.json) and reported as
benchmarks/cifar_reference.py does (its `Suite`), one per core. Results (per-epoch test top-1,
final, train images/s, each result's commit): benchmarks/results/cifar_reference_igcv3.{json,md,
png}; `--seed=N` (N > 0) runs both sides from seed N into cifar_reference_igcv3_seed<N>.*.
One run says little: this training is chaotic (benchmarks/igcv3_divergence.py: PyTorch float32
and float64 from one start part within 3 steps), and finals of one side spread by up to 10 points
over seeds; compare the sides over several seeds (docs/results.md gathers them).
"""
from __future__ import annotations

import numpy as np

from benchmarks import cifar_reference as ref

CONFIG = ref.ROOT / "experiments" / "cifar10_igcv3.py"
RUNS = (("1.0", "mxnet_xavier"),)
# Per epoch (520 steps + the test set) on one loaded core of this machine, measured: igc-jax
# ≈ 5.1 min (165 images/s with the depthwise convs in mode `native`; 31–40 images/s, ≈ 25 min,
# as XLA grouped convolutions), PyTorch ≈ 3.3 min (270 images/s, channels-last). 8 epochs keep a
# job within 45 minutes.
EPOCHS = 8
MINUTES = {("igc_jax", "1.0"): 41, ("pytorch", "1.0"): 27}
OFFICIAL_EPOCHS, OFFICIAL_DECAY = 480, 0.98
# The recipe, stated once for the PyTorch side (igc-jax reads the same from its config file).
BATCH = 96
MEAN, STD = ref.MEAN, (1.0, 1.0, 1.0)         # normalization "cifar10_mean_only"
LR, MOMENTUM, WEIGHT_DECAY = 0.045, 0.9, 4e-5
BN_EPSILON, BN_MOMENTUM = 1e-5, 0.1            # torch's momentum: 1 − MXNet's 0.9


def decay_per_epoch(epochs: int) -> float:
    """The per-epoch factor that takes the lr down by the official 480 epochs' 0.98^480 in
    `epochs` epochs."""
    return OFFICIAL_DECAY ** (OFFICIAL_EPOCHS / epochs)


def learning_rate(step: int, steps_per_epoch: int, decay: float) -> float:
    """lr of update `step` (0-based): LR·decay^epoch, in float64 rounded to float32 (igc-jax's
    `exponential` schedule's table)."""
    return float(np.float32(LR * decay ** (step // steps_per_epoch)))


# ----------------------------------------------------------------------------- PyTorch side

def _keep_running_var(bn, args) -> None:
    """Before a training forward: torch's kernel updates the running variance it is given in
    place and keeps that tensor for the backward pass, so it gets a copy; the buffer itself waits
    for `_biased_running_var`."""
    if bn.training:
        bn.var_before = bn.running_var
        bn.running_var = bn.running_var.clone()


def _biased_running_var(bn, args, output) -> None:
    """torch made the copy (1−m)·old + m·v·n/(n−1) (v: the batch's biased variance over n values
    per channel); the buffer becomes (1−m)·old + m·v."""
    if bn.training:
        n = args[0].numel() // args[0].shape[1]
        old, keep = bn.var_before, 1.0 - bn.momentum
        update = (bn.running_var - keep * old) * ((n - 1) / n)       # m·v
        old.mul_(keep).add_(update)
        bn.running_var = old
        del bn.var_before


def mxnet_running_var(bn):
    """`bn` (a torch BatchNorm2d) with MXNet's eps and momentum, keeping the running average of
    the biased batch variance, as MXNet and igc-jax do."""
    bn.eps, bn.momentum = BN_EPSILON, BN_MOMENTUM
    bn.register_forward_pre_hook(_keep_running_var)
    bn.register_forward_hook(_biased_running_var)
    return bn


def cifar(net):
    """A pytorchcv IGCV3 made the CIFAR network this benchmark trains: the global average pool
    for the fixed 7×7 one, and MXNet's BatchNorm running variance."""
    import torch
    net.features.final_pool = torch.nn.AdaptiveAvgPool2d(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            mxnet_running_var(m)
    return net


def mxnet_xavier(net):
    """MXNet's Xavier(gaussian, fan_in, magnitude 2): every conv and linear weight N(0, 2/fan_in)
    (fan_in = C_in/groups·kh·kw), biases 0, BatchNorm scale 1 and bias 0."""
    import torch
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
        elif isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
    return net


def torch_model(width: float, num_classes: int = 10):
    """pytorchcv's IGCV3 at `width` as this benchmark trains it, initialised like mxnet_xavier."""
    from pytorchcv.models import igcv3 as ptcv
    return mxnet_xavier(cifar(ptcv.get_igcv3(width, num_classes=num_classes, in_size=(32, 32))))


def torch_train(net: str, init: str, data_dir, out, epochs: int = EPOCHS) -> None:
    """Train pytorchcv's IGCV3 at width `net` with the recipe above; resumes at its last epoch."""
    import torch
    if init != "mxnet_xavier":
        raise ValueError(f"the PyTorch IGCV3 starts from mxnet_xavier only, not {init!r}")
    ref.torch_setup()
    model = torch_model(float(net)).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=False,
                          weight_decay=WEIGHT_DECAY)
    decay = decay_per_epoch(epochs)
    ref.train_epochs(model, opt, lambda step, steps_per_epoch, num_steps: learning_rate(
        step, steps_per_epoch, decay), data_dir, out, epochs, BATCH, (MEAN, STD))


# ----------------------------------------------------------------------------- igc-jax side

def jax_command(net: str, init: str, data_dir, workdir, epochs: int) -> list[str]:
    """experiments/cifar10_igcv3.py at width `net`, its schedule compressed into `epochs`."""
    return ref.igc_jax_command(f"{CONFIG}:{net}", workdir, data_dir, epochs, {
        "lr_decay_per_epoch": repr(decay_per_epoch(epochs)), "model.init": init})


def model_config(net: str, init: str) -> dict:
    return dict(name="igcv3", width=float(net), init=init)


def intro(summary: dict) -> str:
    e = summary["epochs"]
    return (f"CIFAR-10 (real), IGCV3-D (experiments/cifar10_igcv3.py), {e} epochs, batch "
            f"{summary['batch']}: the config's recipe (SGD momentum 0.9, L2 4e-5, lr 0.045, "
            "MXNet Xavier init, mean subtraction, mean-colour padding) with its 480-epoch "
            f"schedule compressed into {e}: lr ×{decay_per_epoch(e):.4f} = 0.98^(480/{e}) at "
            "every epoch boundary, so the rate falls by 0.98^480 over the run as over the "
            "official 480 epochs. igc-jax through its command line beside pytorchcv's igcv3_w1 "
            "(global average pool, MXNet's BatchNorm running variance), each job pinned to one "
            "core of this shared 2-core machine. `python -m benchmarks.cifar_reference_igcv3`.")


IGCV3 = ref.Suite("cifar_reference_igcv3", __doc__.splitlines()[0], RUNS, EPOCHS, BATCH,
                  MINUTES, model_config, jax_command, torch_train, intro,
                  "CIFAR-10, IGCV3-D: igc-jax (solid) vs PyTorch (dashed)")


def main(argv: list[str] | None = None) -> None:
    ref.main(argv, IGCV3)


if __name__ == "__main__":
    main()
