"""The training state and the jitted train and eval steps (model → step).

One mesh with a `data` axis over all devices of all processes; the batch is sharded along it, the
state replicated; `jax.jit` with explicit shardings and the state donated.
"""
from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from igc_jax import models
from igc_jax.training import sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


# ---------------------------------------------------------------- optimisation

def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                           num_steps: int) -> optax.Schedule:
    """Step schedule of spec §4 in steps: ×0.1 at 1/2, 3/4, 7/8 (cifar) or every 30 epochs (imagenet)."""
    lr = config.learning_rate
    if config.lr_schedule == "cifar":
        boundaries = [int(num_steps * f) for f in (1 / 2, 3 / 4, 7 / 8)]
    elif config.lr_schedule == "imagenet":
        boundaries = list(range(30 * steps_per_epoch, num_steps, 30 * steps_per_epoch))
    else:
        boundaries = []
    warmup = max(int(config.warmup_epochs * steps_per_epoch), 0)
    # join_schedules restarts the count at the warmup's end: shift so decays stay at absolute steps.
    schedule = optax.piecewise_constant_schedule(lr, {b - warmup: 0.1 for b in boundaries if b > warmup})
    if warmup == 0:
        return schedule
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), schedule], [warmup])


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule):
    """SGD with Nesterov momentum; L2 decay added to the gradient of every parameter (spec §4)."""
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov))


def make_model(config: ml_collections.ConfigDict) -> nn.Module:
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    return models.build_model(config.model, num_classes=config.dataset.num_classes, dtype=dtype,
                              conv_mode=config.conv_mode)


# ---------------------------------------------------------------- state and steps

def init_state(model: nn.Module, tx, input_shape: tuple[int, ...], seed: int, mesh):
    """The state initialised directly in its (replicated) sharding: eval_shape, then a jitted init."""

    def init_fn(rng):
        variables = model.init(rng, jnp.zeros((1, *input_shape), jnp.float32), train=False)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))

    rng = jax.random.PRNGKey(seed)
    abstract = jax.eval_shape(init_fn, rng)
    shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
    state = jax.jit(init_fn, out_shardings=shardings)(rng)
    return state, shardings


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def train_step(state: TrainState, batch: dict, *, model: nn.Module, tx, schedule) -> tuple[TrainState, dict]:
    def loss_fn(params):
        logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                      batch["image"], train=True, mutable=["batch_stats"])
        return cross_entropy(logits, batch["label"]).mean(), (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss,
               "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
               "learning_rate": schedule(state.step)}
    return TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                      opt_state=opt_state), metrics


def eval_step(state: TrainState, batch: dict, *, model: nn.Module) -> dict:
    """Masked sums over the global batch: padded examples (mask 0) count for nothing."""
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                         batch["image"], train=False).astype(jnp.float32)
    mask = batch["mask"]
    labels = batch["label"]
    k = min(5, logits.shape[-1])
    topk = jax.lax.top_k(logits, k)[1]
    return {"loss": jnp.sum(cross_entropy(logits, labels) * mask),
            "top1": jnp.sum((topk[:, 0] == labels) * mask),
            "top5": jnp.sum(jnp.any(topk == labels[:, None], axis=-1) * mask),
            "count": jnp.sum(mask)}


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def compile_steps(model, tx, schedule, state_shardings, mesh):
    """The jitted train/eval steps with explicit in/out shardings; the state is donated."""
    rep, batch = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    train = jax.jit(functools.partial(train_step, model=model, tx=tx, schedule=schedule),
                    in_shardings=(state_shardings, batch), out_shardings=(state_shardings, rep),
                    donate_argnums=0)
    evaluate = jax.jit(functools.partial(eval_step, model=model),
                       in_shardings=(state_shardings, batch), out_shardings=rep)
    finite = jax.jit(all_finite, out_shardings=rep)
    return train, evaluate, finite


