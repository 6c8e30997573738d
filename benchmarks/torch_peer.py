"""The PyTorch peer: the CIFAR networks a user would otherwise write, for side-by-side timing.

IGC layer = grouped `conv2d` (L groups) → `channel_shuffle(L)` → grouped 1×1 `conv2d` (M groups)
→ `channel_shuffle(M)`, exactly spec §1 (torch's channel shuffle views channels as (g, C/g) and
transposes: the official code's shuffle with B = g). Networks, BatchNorm (eps 2e-5; torch momentum
= 1 − Flax momentum), the residual units with the official downsampling quirk and the grouped 1×1
projection, and the initialisation (He-normal fan_in convs, uniform ±sqrt(1/fan_in) classifier,
zero bias; or, with init="torch_default", torch.nn's own defaults) follow igc_jax/models/cifar.py.
Everything runs channels-last with `torch.set_num_threads(os.cpu_count())`; the optimiser is SGD
with Nesterov momentum 0.9 and L2 1e-4 added to the gradient (torch's `weight_decay`), spec §4.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

BN_EPSILON = 2e-5


def configure_threads() -> int:
    """Use every core, as a user would; returns the thread count."""
    torch.set_num_threads(os.cpu_count() or 1)
    return torch.get_num_threads()


INITS = ("he_normal", "torch_default")


def conv(c_in: int, c_out: int, k: int, stride: int, groups: int = 1) -> nn.Conv2d:
    """No bias, symmetric padding k // 2; torch's default initialisation until `initialise`."""
    return nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, groups=groups, bias=False)


def initialise(model: nn.Module, init: str) -> nn.Module:
    """`he_normal` (the official code): every conv N(0, 2/fan_in), the classifier U(±sqrt(1/fan_in))
    with zero bias; `torch_default`: what torch.nn's constructors already drew."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "he_normal":
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                bound = math.sqrt(1.0 / m.in_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)
    return model


class IGC(nn.Module):
    """Primary 3×3 conv (L groups) → shuffle(L) → secondary 1×1 conv (M groups) → shuffle(M)."""

    def __init__(self, c_in: int, c_out: int, L: int, M: int, stride: int = 1):
        super().__init__()
        self.L, self.M = L, M
        self.primary = conv(c_in, c_out, 3, stride, groups=L)
        self.secondary = conv(c_out, c_out, 1, 1, groups=M)

    def forward(self, x):
        x = F.channel_shuffle(self.primary(x), self.L)
        return F.channel_shuffle(self.secondary(x), self.M)


def batch_norm(c: int, flax_momentum: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPSILON, momentum=1.0 - flax_momentum)


class CifarNet(nn.Module):
    """RegConv-W (L=None) or IGC-LxMy, plain (D = 3B+2) or +Ident. (D = 6B+2), spec §2."""

    def __init__(self, depth: int, width: int, L: int | None = None, residual: bool = False,
                 num_classes: int = 10, downsample_quirk: bool = True):
        super().__init__()
        per_block = 2 if residual else 1
        B = (depth - 2) // (3 * per_block)
        momentum = 0.9 if residual else 0.99
        self.L, self.residual = L, residual
        self.stem = nn.Sequential(conv(3, width, 3, 1), batch_norm(width, momentum), nn.ReLU())
        layers: list[nn.Module] = []
        c = width
        for s in range(3):
            f = width * 2 ** s
            for b in range(B):
                stride = 2 if s > 0 and b == 0 else 1
                if residual:
                    layers.append(Unit(c, f, stride, L, momentum, downsample_quirk))
                else:
                    layers += [self._layer(c, f, stride, f), batch_norm(f, momentum), nn.ReLU()]
                c = f
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def _layer(self, c_in: int, c_out: int, stride: int, secondary_width: int) -> nn.Module:
        if self.L is None:
            return conv(c_in, c_out, 3, stride)
        return IGC(c_in, c_out, self.L, secondary_width // self.L, stride)

    def forward(self, x):
        x = self.body(self.stem(x))
        return self.classifier(x.mean((2, 3)))


class Unit(nn.Module):
    """Post-activation basic unit; the first layer's secondary groups are C_in / L (the quirk)."""

    def __init__(self, c_in: int, c_out: int, stride: int, L: int | None, momentum: float,
                 downsample_quirk: bool):
        super().__init__()
        groups = L or 1

        def layer(ci, co, st, secondary_width):
            if L is None:
                return conv(ci, co, 3, st)
            return IGC(ci, co, L, secondary_width // L, st)

        self.layer1 = layer(c_in, c_out, stride, c_in if downsample_quirk else c_out)
        self.bn1 = batch_norm(c_out, momentum)
        self.layer2 = layer(c_out, c_out, 1, c_out)
        self.bn2 = batch_norm(c_out, momentum)
        self.proj = None
        if stride != 1 or c_in != c_out:
            self.proj = nn.Sequential(conv(c_in, c_out, 1, stride, groups=groups),
                                      batch_norm(c_out, momentum))

    def forward(self, x):
        y = F.relu(self.bn1(self.layer1(x)))
        y = self.bn2(self.layer2(y))
        return F.relu(y + (x if self.proj is None else self.proj(x)))


def build(model_cfg: dict[str, Any], num_classes: int = 10) -> CifarNet:
    """The peer of `igc_jax.models.build_model` for the CIFAR model configs (cifar_regconv/igc),
    initialised as their `init` field says (default he_normal)."""
    name = model_cfg["name"]
    if name == "cifar_regconv":
        net = CifarNet(model_cfg["depth"], model_cfg["width"], None,
                       model_cfg.get("residual", False), num_classes)
    elif name == "cifar_igc":
        L, M = model_cfg["L"], model_cfg["M"]
        net = CifarNet(model_cfg["depth"], L * M, L, model_cfg.get("residual", False),
                       num_classes, model_cfg.get("downsample_quirk", True))
    else:
        raise ValueError(f"torch peer: no PyTorch version of model {name!r}")
    return initialise(net, model_cfg.get("init", "he_normal"))


def _time_calls(fn, warmup: int, reps: int, device: str = "cpu") -> list[float]:
    """Wall seconds per call; on CUDA each call is timed to its kernels' end (synchronised)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return times


def train_step_times(model_cfg: dict[str, Any], batch: int, *, warmup: int = 2, reps: int = 5,
                     num_classes: int = 10, image_size: int = 32,
                     device: str = "cpu") -> list[float]:
    """Seconds per SGD-Nesterov training step (forward, backward, update) after warm-up, with
    the model and batch on `device` (the GPU suite: "cuda", beside JAX on the same GPU)."""
    torch.manual_seed(0)
    model = build(model_cfg, num_classes).to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=1e-4)
    x = torch.randn(batch, 3, image_size, image_size).to(device,
                                                          memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,)).to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return _time_calls(step, warmup, reps, device)


def igc_layer_times(N: int, H: int, C_in: int, C: int, L: int, M: int, stride: int, *,
                    backward: bool, warmup: int = 1, reps: int = 5,
                    device: str = "cpu") -> list[float]:
    """Seconds per call of one IGC layer, forward or forward+backward (grads of x and weights),
    on `device`."""
    torch.manual_seed(0)
    layer = IGC(C_in, C, L, M, stride).to(device, memory_format=torch.channels_last)
    x = torch.randn(N, C_in, H, H).to(device, memory_format=torch.channels_last)
    x.requires_grad_(backward)

    def call():
        if backward:
            layer.zero_grad(set_to_none=True)
            x.grad = None
            layer(x).square().sum().backward()
        else:
            with torch.no_grad():
                layer(x)

    return _time_calls(call, warmup, reps, device)
