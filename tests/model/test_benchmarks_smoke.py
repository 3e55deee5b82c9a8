"""Smoke runs of the model benchmarks (tiny settings, CPU): the scripts run and report sane numbers."""

from __future__ import annotations

import math

from tests.conftest import load_script


def _load(name: str):
    return load_script(f"benchmarks/{name}.py")


def test_gpu_bench_tiny_runs_on_cpu(capsys):
    result = _load("gpu_bench").main(["--tiny", "--repeats", "1"])
    assert result["device"] == "cpu" and result["matmul_tflops"] > 0
    assert [r["area"] for r in result["bf16_forward"]] == [32, 64]
    assert all(r["ms"] > 0 and 0 < r["fraction_of_matmul"] for r in result["bf16_forward"])
    diffs = result["bf16_vs_fp32"]
    assert 0 < diffs["bf16 model vs fp32"]["rel_l2"] < 0.1
    assert 0 < diffs["fp32 model + bf16 attention vs fp32"]["rel_l2"] < diffs["bf16 model vs fp32"]["rel_l2"]
    assert "of matmul rate" in capsys.readouterr().out


def test_cpu_bench_in_process(capsys):
    rows = _load("bench_dit_cpu").main(
        ["--in-process", "--layers", "1", "--dim", "64", "--latent", "8", "--frames", "2", "--repeats", "1"]
    )
    assert [r["mode"] for r in rows] == ["fp32", "bf16"]
    assert all(r["tokens"] == 2 * 16 + 150 and r["median_ms"] > 0 and math.isfinite(r["gflops_per_s"]) for r in rows)
    assert "forward peak MiB" in capsys.readouterr().out
