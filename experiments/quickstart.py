"""Quick start: IGC-L4M4 (D=8, plain) on the embedded handwritten digits, ~25 CPU-seconds.

    python -m igc_jax.main --config=experiments/quickstart.py --workdir=/tmp/igc_quickstart

Hardware: any CPU (2 cores suffice). Data: scikit-learn's bundled 8×8 digits (1,797 real images,
10 classes), nothing to download. Expected: ≥ 95% test top-1 (the CI end-to-end test checks it).
Times: README, Quick start (benchmarks/results/quickstart.md).
The network is the paper's CIFAR IGC layout (spec §2) at width L·M = 16 on 8×8 inputs.
"""
from igc_jax.configs import base_config, no_argument


def get_config(arg: str | None = None):
    no_argument("experiments/quickstart.py", arg)
    c = base_config()
    c.model.name = "cifar_igc"
    c.model.depth = 8
    c.model.L = 4
    c.model.M = 4
    c.model.init = "he_normal"          # the official initialisation (or "torch_default")
    c.dataset.name = "digits"
    c.dataset.num_classes = 10
    c.dataset.image_size = 8
    c.dataset.normalization = "digits"
    c.dataset.augment = "none"
    c.batch_size = 64
    c.eval_batch_size = 128
    c.num_epochs = 30.0
    c.log_every_steps = 50
    c.checkpoint_every_steps = 200
    return c
