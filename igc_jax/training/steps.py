"""The training state and the jitted train and eval steps (model → step), computed per device.

One mesh with a `data` axis over all devices of all processes; the batch is sharded along it, the
state replicated. Each step runs under `jax.shard_map`: every device computes the network on its
own shard of the batch, whatever the IGC layers' computation mode. (Under plain `jax.jit`, XLA's
SPMD partitioner does not partition grouped convolutions that are not depthwise-shaped, openxla/xla
issue 47945, and would all-gather the whole batch around every IGC layer; the C++ kernels of mode
`native` have no partitioning rule at all.) The collectives are explicit and few:
- the gradients, flattened into one vector, are summed once per step (one all-reduce; each shard
  weights its mean loss by 1/devices, so the sum is the global batch's gradient);
- BatchNorm (config.batch_norm="global", the default) averages its two moments over the axis in
  the forward pass and its two gradient sums in the backward pass, so 1 and N devices train the
  same network; "per_device" keeps each device's own batch statistics (the authors' multi-GPU
  MXNet training) and averages the running statistics once per step;
- the metrics: one all-reduce of the loss and accuracy (train) or of the masked sums (eval).
`per_device=False` builds the old GSPMD steps (plain `jax.jit`), kept for `benchmarks.scaling`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec as P

from igc_jax import models
from igc_jax.igc import autotune, select
from igc_jax.igc.layers import layer_shapes
from igc_jax.igc.select import ModeContext, ModePlan
from igc_jax.training import sharding
from igc_jax.training.sharding import DATA_AXIS


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


# ---------------------------------------------------------------- optimisation

def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                           num_steps: int) -> optax.Schedule:
    """Step schedule of spec §4 in steps: ×0.1 at 1/2, 3/4, 7/8 (cifar) or every 30 epochs
    (imagenet); or IGCV3's ×lr_decay_per_epoch at every epoch boundary (exponential, as the
    authors' MXNet MultiFactorScheduler stepping once per epoch); after the warmup, if any."""
    lr = config.learning_rate
    warmup = max(int(config.warmup_epochs * steps_per_epoch), 0)
    if config.lr_schedule == "exponential":
        # Each epoch's rate in float64, then float32 (a float32 power drifts by 1e-5 over 480
        # epochs); the count restarts after the warmup, the epoch is the absolute one.
        epochs = -(-num_steps // steps_per_epoch)
        rates = jnp.asarray(lr * config.lr_decay_per_epoch ** np.arange(epochs + 1), jnp.float32)

        def schedule(count):
            return rates[jnp.minimum((count + warmup) // steps_per_epoch, epochs)]
    else:
        if config.lr_schedule == "cifar":
            boundaries = [int(num_steps * f) for f in (1 / 2, 3 / 4, 7 / 8)]
        elif config.lr_schedule == "imagenet":
            boundaries = list(range(30 * steps_per_epoch, num_steps, 30 * steps_per_epoch))
        else:
            boundaries = []
        # join_schedules restarts the count at the warmup's end: shift so decays stay at
        # absolute steps.
        schedule = optax.piecewise_constant_schedule(
            lr, {b - warmup: 0.1 for b in boundaries if b > warmup})
    if warmup == 0:
        return schedule
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), schedule], [warmup])


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule):
    """SGD with Nesterov momentum; L2 decay added to the gradient of every parameter (spec §4)."""
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov))


def make_model(config: ml_collections.ConfigDict, plan: ModePlan | None = None,
               per_device: bool = True) -> nn.Module:
    """The config's network, its IGC layers computed by `plan` (None: config.conv_mode for all,
    `auto` then resolving each layer as it is traced); under the per-device steps its BatchNorm
    averages over `data` (unless config.batch_norm is "per_device")."""
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    bn_axis = DATA_AXIS if per_device and config.get("batch_norm", "global") == "global" else None
    if plan is None:
        plan = ModePlan("auto" if config.conv_mode == "autotune" else config.conv_mode)
    return models.build_model(config.model, num_classes=config.dataset.num_classes, dtype=dtype,
                              plan=plan, bn_axis=bn_axis)


@dataclasses.dataclass(frozen=True)
class PlannedModes:
    """The IGC modes a run builds its network with, and how they were decided."""
    plan: ModePlan
    layers: dict[str, tuple[str, str]]       # layer path -> (its shape, its mode)
    measured: bool = False                   # by `igc_jax.igc.autotune` (else the rules / config)
    tuned: tuple[dict, ...] = ()             # autotune's timings per distinct shape (JSON)


def plan_modes(config: ml_collections.ConfigDict, input_shape: tuple[int, ...],
               context: ModeContext, *, batch_size: int | None = None,
               can_measure: bool = True) -> PlannedModes:
    """The plan the config's network is built with, decided once from its layer shapes, before
    anything of the step compiles: config.conv_mode for every IGC layer; or measured on this
    process's device (`autotune`, and `auto` on GPU/TPU: `autotune.measures`) at the per-device
    share of `batch_size` (default config.batch_size), on process 0 only, its plan shared with
    every process; or `auto`'s rules for each shape in `context` (also where nothing can run:
    `can_measure` False, compile-only devices). Depthwise convs are never measured: they get
    `select.depthwise_mode`."""
    shapes = layer_shapes(make_model(config, ModePlan("grouped")), input_shape)
    rules = "auto" if config.conv_mode == "autotune" else config.conv_mode
    igc_shapes = [s for s in shapes.values() if not s.depthwise]
    if not (igc_shapes and can_measure and autotune.measures(config.conv_mode, context.backend)):
        plan = select.decide(shapes.values(), rules, context)
        return PlannedModes(plan, select.layer_modes(shapes, plan))
    text = ""
    if jax.process_index() == 0:
        batch = max((batch_size or config.batch_size) // jax.device_count(), 1)
        plan, tuned = autotune.tune(igc_shapes, config.dtype, batch, context)
        text = json.dumps({"plan": plan.to_json(), "tuned": [t.to_json() for t in tuned]})
    shared = json.loads(sharding.broadcast_text(text))
    plan = ModePlan.from_json(shared["plan"])
    depthwise = select.decide([s for s in shapes.values() if s.depthwise], rules, context)
    plan = dataclasses.replace(plan, by_shape=plan.by_shape + depthwise.by_shape)
    return PlannedModes(plan, select.layer_modes(shapes, plan), True, tuple(shared["tuned"]))


# ---------------------------------------------------------------- state and steps

def _init_fn(model: nn.Module, tx, input_shape: tuple[int, ...]):
    def init_fn(rng):
        variables = model.init(rng, jnp.zeros((1, *input_shape), jnp.float32), train=False)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))
    return init_fn


def abstract_state(model: nn.Module, tx, input_shape: tuple[int, ...], mesh):
    """(the state's ShapeDtypeStructs in their replicated sharding, those shardings): the state
    without a single array made, for compiling on devices that cannot run (`training.aot`)."""
    shapes = jax.eval_shape(_init_fn(model, tx, input_shape), jax.random.PRNGKey(0))
    shardings = jax.tree.map(lambda _: sharding.replicated(mesh), shapes)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         shapes, shardings)
    return state, shardings


def init_state(model: nn.Module, tx, input_shape: tuple[int, ...], seed: int, mesh):
    """The state initialised directly in its (replicated) sharding: eval_shape, then a jitted
    init."""
    _, shardings = abstract_state(model, tx, input_shape, mesh)
    state = jax.jit(_init_fn(model, tx, input_shape), out_shardings=shardings)(
        jax.random.PRNGKey(seed))
    return state, shardings


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def all_reduce(tree, axis: str | None, op=lax.psum):
    """A pytree reduced over a mesh axis (`lax.psum` or `lax.pmean`) as ONE all-reduce of its
    flattened leaves (None: unchanged; the GSPMD steps see the global batch already)."""
    if axis is None:
        return tree
    flat, unravel = ravel_pytree(tree)
    return unravel(op(flat, axis))


def train_step(state: TrainState, batch: dict, *, model: nn.Module, tx, schedule,
               axis: str | None = None, average_batch_stats: bool = False
               ) -> tuple[TrainState, dict]:
    """One SGD step on `batch` (this device's shard when `axis` names the mesh axis)."""
    # Each shard's mean loss weighted 1/devices: the sum of the shards' gradients is the global
    # batch's (equal shards), so the gradient all-reduce is a plain sum with no rescaling after
    # it (XLA would repeat a division of the flat vector in every parameter's slice).
    weight = 1.0 / lax.axis_size(axis) if axis is not None else 1.0

    def loss_fn(params):
        logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                      batch["image"], train=True, mutable=["batch_stats"])
        loss = cross_entropy(logits, batch["label"]).mean()
        return weight * loss, (loss, logits, updates["batch_stats"])

    (_, (loss, logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    grads = all_reduce(grads, axis)  # the one gradient all-reduce of the step
    if average_batch_stats:  # per-device BatchNorm: one set of running statistics
        batch_stats = all_reduce(batch_stats, axis, lax.pmean)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = all_reduce({"loss": loss,
                          "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}, axis,
                         lax.pmean)
    metrics["learning_rate"] = schedule(state.step)
    return TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                      opt_state=opt_state), metrics


def eval_step(state: TrainState, batch: dict, *, model: nn.Module, axis: str | None = None) -> dict:
    """Masked sums over the global batch: padded examples (mask 0) count for nothing."""
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                         batch["image"], train=False).astype(jnp.float32)
    mask = batch["mask"]
    labels = batch["label"]
    k = min(5, logits.shape[-1])
    topk = jax.lax.top_k(logits, k)[1]
    sums = jnp.stack([jnp.sum(cross_entropy(logits, labels) * mask),
                      jnp.sum((topk[:, 0] == labels) * mask),
                      jnp.sum(jnp.any(topk == labels[:, None], axis=-1) * mask),
                      jnp.sum(mask)])
    if axis is not None:
        sums = lax.psum(sums, axis)
    return dict(zip(("loss", "top1", "top5", "count"), sums))


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def per_device(fn, mesh):
    """`fn(state, batch)` run on every device with its own batch shard (`shard_map` over `data`),
    the state and the (already reduced) outputs replicated."""
    return jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(),
                         check_vma=False)


def compile_steps(model, tx, schedule, state_shardings, mesh, *, per_device_steps: bool = True,
                  average_batch_stats: bool = False):
    """The jitted train/eval steps with explicit in/out shardings; the state is donated.

    per_device_steps: run them under `shard_map` (see the module docstring); False: plain GSPMD.
    average_batch_stats: per-device BatchNorm (its running statistics averaged once per step).
    """
    rep, batch = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    axis = DATA_AXIS if per_device_steps else None
    train_fn = functools.partial(train_step, model=model, tx=tx, schedule=schedule, axis=axis,
                                 average_batch_stats=average_batch_stats and per_device_steps)
    eval_fn = functools.partial(eval_step, model=model, axis=axis)
    if per_device_steps:
        train_fn, eval_fn = per_device(train_fn, mesh), per_device(eval_fn, mesh)
    train = jax.jit(train_fn, in_shardings=(state_shardings, batch),
                    out_shardings=(state_shardings, rep), donate_argnums=0)
    evaluate = jax.jit(eval_fn, in_shardings=(state_shardings, batch), out_shardings=rep)
    finite = jax.jit(all_finite, out_shardings=rep)
    return train, evaluate, finite
