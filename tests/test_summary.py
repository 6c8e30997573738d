"""`igc_jax.summary`: parameter and multiply-add counts from shapes, against the paper (spec §3).

Expected multiply-adds are computed here from the layouts (per layer: weights × output pixels),
not by calling the code under test.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from igc_jax import models, summary

ROOT = Path(__file__).resolve().parents[1]
PAPER_FLOPS_G = {"ResNet (C=64)": 1.8, "ResNet (C=69)": 2.1, "IGC-L4M32+Ident.": 1.9,
                 "IGC-L16M16+Ident.": 2.2, "IGC-L100M2+Ident.": 1.3}


def cifar_totals(arg: str, classes: int = 10) -> dict[str, int]:
    return summary.summarize_model(models.cifar_model(arg), num_classes=classes, image_size=32)[1]


@pytest.mark.parametrize("network", list(PAPER_FLOPS_G))
def test_imagenet_macs_match_the_papers_flops(network):
    _, totals = summary.summarize_model(models.imagenet_model(network), num_classes=1000,
                                        image_size=224)
    assert abs(totals["macs"] / 1e9 - PAPER_FLOPS_G[network]) <= 0.07


def test_resnet18_macs_from_the_layout():
    """Stem 7×7 at 112², 16 3×3 convs at 56², 28², 14², 7², three 1×1 projections, classifier."""
    expected = 7 * 7 * 3 * 64 * 112 ** 2 + 512 * 1000
    c_in = 64
    for c, hw in zip((64, 128, 256, 512), (56, 28, 14, 7)):
        expected += (9 * c_in * c + 3 * 9 * c * c) * hw * hw
        if c_in != c:
            expected += c_in * c * hw * hw
        c_in = c
    _, totals = summary.summarize_model(models.imagenet_model("ResNet (C=64)"), num_classes=1000,
                                        image_size=224)
    assert totals["macs"] == expected == 1_814_073_344


def test_residual_igc_macs_count_primary_and_secondary():
    """IGC-L24M2+Ident., D=8 (one unit per stage), with the downsampling quirk, by hand."""
    L, C = 24, 48
    expected = 9 * 3 * C * 32 * 32  # stem
    c_in = C
    for s, hw in enumerate((32, 16, 8)):
        c = C * 2 ** s
        first = 9 * (c_in // L) * c + c * (c // (c_in // L))  # secondary groups C_in / L (quirk)
        second = 9 * (c // L) * c + c * L
        expected += (first + second) * hw * hw
        if c_in != c:
            expected += (c_in // L) * c * hw * hw
        c_in = c
    expected += 4 * C * 10
    rows, totals = summary.summarize_model(models.cifar_model("L24M2,D8,ident"), num_classes=10,
                                           image_size=32)
    assert totals["macs"] == expected
    row = {r.name: r for r in rows}["stage2_unit1_igc1"]
    assert (row.in_shape, row.out_shape) == ((32, 32, 48), (16, 16, 96))
    assert (row.kernel, row.groups) == ("3×3/2 + 1×1", "L=24, M=2")
    assert row.macs == (9 * 2 * 96 + 96 * 48) * 16 * 16 and row.params == 9 * 2 * 96 + 96 * 48


def test_sum_fusion_secondary_costs_no_parameters_and_no_multiply_adds():
    rows, _ = summary.summarize_model(models.cifar_model("L4M8,D8,sumfusion"), num_classes=10,
                                      image_size=32)
    row = {r.name: r for r in rows}["stage1_layer1_igc"]
    assert row.params == 9 * 8 * 32 and row.macs == 9 * 8 * 32 * 32 * 32
    assert row.groups == "L=4, M=8 (sum)"


@pytest.mark.parametrize("arg", ["L24M2,D20,ident", "W18,D8", "L4M8,D26,sumfusion"])
def test_totals_add_up_to_every_parameter(arg):
    cfg = models.cifar_model(arg)
    totals = cifar_totals(arg)
    model = models.build_model(cfg, num_classes=10)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)["params"]
    assert set(totals) == set(summary.TOTAL_KEYS)
    assert totals["params"] == sum(math.prod(p.shape) for p in jax.tree.leaves(params))
    assert totals["params"] == (totals["conv_params"] + totals["classifier_params"]
                                + totals["bn_params"])
    assert totals["classifier_params"] == 4 * cfg.get("width", cfg.get("L", 1) * cfg.get("M", 1)) \
        * 10 + 10


@pytest.mark.parametrize("depth", [8, 20, 26])
@pytest.mark.parametrize("ident", ["", ",ident"])
def test_papers_framing_igc_smaller_than_regconv(depth, ident):
    """At the same depth: IGC-L24M2 < RegConv-W16 < RegConv-W18 in parameters and multiply-adds."""
    igc, w16, w18 = (cifar_totals(f"{net},D{depth}{ident}") for net in ("L24M2", "W16", "W18"))
    for key in ("params", "macs"):
        assert igc[key] < w16[key] < w18[key]


def test_paper_table_lists_every_network_beside_the_papers_numbers():
    table = summary.paper_table()
    for network, (params, flops) in summary.PAPER_IMAGENET.items():
        line = next(line for line in table.splitlines() if line.startswith(f"| {network} |"))
        assert f"| {params:.3f}M |" in line and f"| {flops:.1f}G |" in line
    for arg in summary.PAPER_CIFAR:
        for ident in ("", ",ident"):
            assert f"| {models.network_name(models.cifar_model(f'{arg},D20{ident}'))} |" in table


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "igc_jax.summary", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_cli_json_with_a_config_override():
    """`--config.model.M=4` on the L24M2 config counts IGC-L24M4: the absl/ml-collections path."""
    run = _cli("--config=experiments/cifar10_igc.py:L24M2,D20", "--config.model.M=4", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == cifar_totals("L24M4,D20")


def test_cli_table_of_an_imagenet_network_takes_seconds():
    start = time.perf_counter()
    run = _cli("--config=experiments/imagenet_l16m16.py")
    elapsed = time.perf_counter() - start
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "IGC-L16M16+Ident."
    assert "stage4_unit2_igc2" in run.stdout and "7×7×2048 → 7×7×2048" in run.stdout
    assert elapsed < 120  # seconds even on a loaded 2-core machine; a compiled pass takes minutes


def test_cli_without_config_or_paper_is_a_usage_error():
    run = _cli()
    assert run.returncode != 0 and "--config" in run.stderr
