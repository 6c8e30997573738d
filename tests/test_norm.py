"""The networks' BatchNorm (igc_jax.models.norm) against flax's nn.BatchNorm: the same variables,
outputs, gradients and running averages, alone and over the shards of a batch."""
from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from igc_jax.models import norm


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_batch_norm_equals_flax(dtype):
    """norm.BatchNorm: nn.BatchNorm's variables, outputs, gradients and running averages."""
    x = (3.0 * jax.random.normal(jax.random.key(0), (4, 5, 3, 6)) + 1.5).astype(dtype)
    ct = jax.random.normal(jax.random.key(1), x.shape)
    kw = dict(momentum=0.9, epsilon=2e-5, dtype=dtype)
    ours, ref = norm.BatchNorm(use_running_average=False, **kw), nn.BatchNorm(
        use_running_average=False, **kw)
    v_ours, v_ref = ours.init(jax.random.key(2), x), ref.init(jax.random.key(2), x)
    chex.assert_trees_all_equal(v_ours, v_ref)
    params = {"scale": jnp.linspace(0.5, 2.0, 6), "bias": jnp.linspace(-1.0, 1.0, 6)}

    def run(module, variables):
        def loss(p, x):
            y, state = module.apply({"params": p, "batch_stats": variables["batch_stats"]}, x,
                                    mutable=["batch_stats"])
            # The running averages feed the loss too, so their gradient path is checked.
            stats = state["batch_stats"]
            return jnp.sum(jnp.sin(y.astype(jnp.float32)) * ct) + jnp.sum(
                stats["mean"] ** 2 + 3.0 * stats["var"]), (y, state)
        (_, (y, state)), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(params, x)
        return y, state, grads

    tol = dict(rtol=2e-2, atol=2e-2) if dtype == jnp.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(run(ours, v_ours)), jax.tree.leaves(run(ref, v_ref))):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **tol)
    eval_ours = norm.BatchNorm(use_running_average=True, **kw)
    eval_ref = nn.BatchNorm(use_running_average=True, **kw)
    np.testing.assert_allclose(
        np.asarray(eval_ours.apply({"params": params, "batch_stats": v_ref["batch_stats"]}, x),
                   np.float32),
        np.asarray(eval_ref.apply({"params": params, "batch_stats": v_ref["batch_stats"]}, x),
                   np.float32), **tol)


@pytest.mark.parametrize("axis_name", ["data", None], ids=["global", "per-device"])
def test_batch_norm_over_shards_equals_flax(axis_name):
    """norm.BatchNorm on 8 shards of a batch (`jax.vmap` with an axis name stands in for
    shard_map's devices): with `axis_name` its outputs, gradients and running statistics are
    nn.BatchNorm's on the whole batch; without, nn.BatchNorm's on each shard by itself."""
    shards = 8
    x = 3.0 * jax.random.normal(jax.random.key(0), (shards, 2, 5, 3, 6)) + 1.5
    ct = jax.random.normal(jax.random.key(1), x.shape)
    kw = dict(momentum=0.9, epsilon=2e-5)
    params = {"scale": jnp.linspace(0.5, 2.0, 6), "bias": jnp.linspace(-1.0, 1.0, 6)}
    stats0 = {"mean": jnp.zeros(6), "var": jnp.ones(6)}

    def loss(module, p, x, ct, weight):
        y, state = module.apply({"params": p, "batch_stats": stats0}, x, mutable=["batch_stats"])
        stats = state["batch_stats"]
        return jnp.sum(jnp.sin(y) * ct) + weight * jnp.sum(stats["mean"] ** 2 + 3 * stats["var"]), (
            y, stats)

    ours = norm.BatchNorm(use_running_average=False, axis_name=axis_name, **kw)
    ref = nn.BatchNorm(use_running_average=False, **kw)
    grad = functools.partial(jax.value_and_grad(loss, (1, 2), has_aux=True))
    # Each shard's copy of the (shared) global statistics carries 1/8 of their loss term.
    weight = 1.0 / shards if axis_name else 1.0
    (_, (y, stats)), (dp, dx) = jax.vmap(
        lambda p, x, ct: grad(ours, p, x, ct, weight), in_axes=(None, 0, 0),
        axis_name="data")(params, x, ct)
    dp = jax.tree.map(lambda g: g.sum(0), dp)  # the step sums (averages) shard gradients
    if axis_name:
        whole = lambda a: a.reshape(-1, *a.shape[2:])  # noqa: E731
        (_, (y_ref, stats_ref)), (dp_ref, dx_ref) = grad(ref, params, whole(x), whole(ct), 1.0)
        y_ref, dx_ref = y_ref.reshape(x.shape), dx_ref.reshape(x.shape)
        stats_ref = jax.tree.map(lambda s: jnp.broadcast_to(s, (shards, *s.shape)), stats_ref)
    else:
        (_, (y_ref, stats_ref)), (dp_ref, dx_ref) = jax.vmap(
            lambda p, x, ct: grad(ref, p, x, ct, 1.0), in_axes=(None, 0, 0))(params, x, ct)
        dp_ref = jax.tree.map(lambda g: g.sum(0), dp_ref)
    for a, b in zip(jax.tree.leaves((y, stats, dp, dx)),
                    jax.tree.leaves((y_ref, stats_ref, dp_ref, dx_ref))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
