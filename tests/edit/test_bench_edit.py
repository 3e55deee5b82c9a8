"""Smoke runs of benchmarks/bench_edit.py (tiny settings, CPU): both sections run and report sane numbers."""

from __future__ import annotations

from tests.conftest import load_script


def _bench():
    return load_script("benchmarks/bench_edit.py")


def test_cpu_section_in_process(capsys):
    args = ["--in-process", "--options", "reference", "batched-cfg", "no-text-cache", "--steps", "2",
            "--resolution", "32", "--turns", "3", "--repeats", "1", "--threads", "0"]  # fmt: skip
    result = _bench().main(args)
    rows = {r["option"]: r for r in result["rows"]}
    assert rows["reference"]["dit_calls"] == 3 * 2 * 2 and rows["batched-cfg"]["dit_calls"] == 3 * 2
    # the cache encodes each distinct prompt once; without it every round encodes its whole session again
    assert rows["reference"]["text_encodes"] == 3 + 1 and rows["no-text-cache"]["text_encodes"] > 3 + 1
    assert all(r["seconds_per_turn"] > 0 and r["peak_rss_mib"] > 0 for r in rows.values())
    assert "s/turn" in capsys.readouterr().out


def test_gpu_section_tiny_on_cpu(capsys):
    result = _bench().main(["--gpu", "--tiny", "--turns", "2", "--areas", "32"])
    assert result["device"] == "cpu" and result["matmul_tflops"] > 0
    modes = [r["mode"] for r in result["runs"]]
    assert modes == ["fp32 two-pass (reference)", "bf16 two-pass", "bf16 batched-cfg"]
    for r in result["runs"]:
        assert len(r["turn_transformer_s"]) == 2 and r["last_turn_tflops"] > 0 and r["frame"] == [32, 32]
    assert "of matmul rate" in capsys.readouterr().out
