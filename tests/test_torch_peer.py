"""The PyTorch peer of benchmarks/cifar_reference.py trains the same function as igc-jax.

With igc-jax's parameters copied into the peer (in creation order: convs, IGC primary and
secondary kernels, BatchNorms, classifier), both give the same training-mode logits (batch
statistics), the same gradients of the loss, the same running statistics after a step (up to
torch's unbiased running variance), and their SGD-Nesterov updates with L2 on every parameter
agree over a decaying schedule. Skipped without torch (`pip install -e ".[bench]"`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_peer  # noqa: E402
from igc_jax import configs, models  # noqa: E402
from igc_jax.training import steps  # noqa: E402


def _flax_leaves(params: dict) -> list[tuple[str, np.ndarray]]:
    """(kind, array) in creation order; kernels converted to torch's (O, I/g, kh, kw)."""
    out = []
    for name, sub in params.items():
        for key, value in sub.items():
            a = np.asarray(value)
            if key in ("kernel", "primary", "secondary") and a.ndim == 4:
                out.append(("conv", a.transpose(3, 2, 0, 1)))
            elif name == "classifier":
                out.append(("linear_" + key, a.T if key == "kernel" else a))
            else:
                out.append(("bn_" + key, a))
    return out


def _torch_slots(net) -> list[tuple[str, torch.Tensor]]:
    slots = []
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            slots.append(("conv", m.weight))
        elif isinstance(m, torch.nn.BatchNorm2d):
            slots += [("bn_scale", m.weight), ("bn_bias", m.bias)]
        elif isinstance(m, torch.nn.Linear):
            slots += [("linear_kernel", m.weight), ("linear_bias", m.bias)]
    return slots


def _pair(arg: str):
    cfg = models.cifar_model(arg)
    model = models.build_model(cfg, num_classes=10, plan="grouped")
    variables = model.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False)
    net = torch_peer.build(dict(cfg))
    leaves, slots = _flax_leaves(variables["params"]), _torch_slots(net)
    # Residual units create their projection after the unit's two layers in both, but torch
    # registers it after bn2 while flax creates proj before proj_bn: both orders match.
    assert [k for k, _ in leaves] == [k for k, _ in slots]
    with torch.no_grad():
        for (_, a), (_, p) in zip(leaves, slots):
            assert tuple(p.shape) == a.shape
            p.copy_(torch.from_numpy(np.ascontiguousarray(a)))
    return model, variables, net, slots


@pytest.mark.parametrize("arg", ["L24M2,D8", "W16,D8", "L4M8,D8,ident"])
def test_same_logits_gradients_and_running_statistics(arg):
    model, variables, net, slots = _pair(arg)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, 16)

    def loss_fn(params):
        logits, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                      jnp.asarray(x), train=True, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean()
        return loss, (logits, updates["batch_stats"])

    (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    net.train()
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    out = net(xt)
    torch_loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(y))
    torch_loss.backward()
    np.testing.assert_allclose(out.detach().numpy(), np.asarray(logits), rtol=2e-4, atol=2e-4)
    assert abs(float(torch_loss) - float(loss)) < 1e-5
    # jax.grad returns dicts with sorted keys: back to the parameters' creation order.
    grads = {k: {kk: grads[k][kk] for kk in sub} for k, sub in variables["params"].items()}
    # Each gradient as a whole, relative to its norm: in float32 a ReLU input within rounding of
    # 0 can take the other branch (in L4M8,D8,ident one pixel does: one channel of the last
    # bn2's bias gradient moves 1.5%, every gradient below it ~0.2%; igc-jax equals torch in
    # float64 to 2e-6 on the nets without such a pixel). A wrong layer is off by O(1).
    errors = [np.linalg.norm(p.grad.numpy() - g) / np.linalg.norm(g)
              for (_, g), (_, p) in zip(_flax_leaves(grads), slots)]
    assert max(errors) < 1e-2, errors
    # Running means after one step: flax m·old + (1−m)·batch, torch (1−momentum)·old + ….
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    flax_means = [np.asarray(stats[k]["mean"]) for k in variables["batch_stats"]]
    assert len(bns) == len(flax_means)
    for bn, mean in zip(bns, flax_means):
        np.testing.assert_allclose(bn.running_mean.numpy(), mean, rtol=1e-4, atol=1e-6)
    # Evaluation: both normalise with the running statistics (here flax's, copied over).
    with torch.no_grad():
        for bn, k in zip(bns, variables["batch_stats"]):
            bn.running_mean.copy_(torch.from_numpy(np.asarray(stats[k]["mean"])))
            bn.running_var.copy_(torch.from_numpy(np.asarray(stats[k]["var"])))
    evaluated = model.apply({"params": variables["params"], "batch_stats": stats}, jnp.asarray(x),
                            train=False)
    net.eval()
    with torch.no_grad():
        np.testing.assert_allclose(net(xt).numpy(), np.asarray(evaluated), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("config", ["experiments/cifar10_igc.py:L24M2,D8",
                                    "experiments/cifar10_igcv3.py"])
def test_sgd_with_l2_matches_igc_jax_optimizer(config):
    """torch.optim.SGD(momentum, nesterov as the config says, weight_decay) and igc-jax's
    make_optimizer over 40 updates of a decaying schedule, from the same start and with the same
    gradients: the Nesterov recipe of benchmarks/cifar_reference.py and IGCV3's plain momentum
    (benchmarks/cifar_reference_igcv3.py)."""
    c = configs.load_config(config)
    schedule = steps.learning_rate_schedule(c, 5, 40)
    tx = steps.make_optimizer(c, schedule)
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(50).astype(np.float32)
    grads = rng.standard_normal((40, 50)).astype(np.float32)
    params, state = jnp.asarray(w0), tx.init(jnp.asarray(w0))
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = torch.optim.SGD([p], lr=c.learning_rate, momentum=c.momentum, nesterov=c.nesterov,
                          weight_decay=c.weight_decay)
    for step, g in enumerate(grads):
        updates, state = tx.update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)
        for group in opt.param_groups:
            group["lr"] = float(schedule(step))
        p.grad = torch.from_numpy(g.copy())
        opt.step()
    np.testing.assert_allclose(p.detach().numpy(), np.asarray(params), rtol=1e-5, atol=1e-6)
