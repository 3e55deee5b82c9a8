"""The transformers backend on a tiny random-weight Qwen2.5-VL loaded from a local folder (no download)."""

from __future__ import annotations

import json

import pytest

from tests.annotate.conftest import FAST
from tests.annotate.tiny_vlm import build_tiny_qwen_vl
from vincie_cli.annotate.backends.base import PairRequest
from vincie_cli.cli import main
from vincie_cli.utils.io import read_jsonl


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return build_tiny_qwen_vl(tmp_path_factory.mktemp("tiny_vlm") / "qwen")


@pytest.fixture(scope="module")
def backend(tiny_vlm):
    from vincie_cli.annotate.backends.transformers import TransformersBackend

    return TransformersBackend(str(tiny_vlm), device="cpu", dtype="float32", batch_size=3, max_tokens=6, image_size=64)


def _pairs(video_folder, tmp_path, n=3):
    from PIL import Image

    from vincie_cli.video.decode import open_video

    reqs = []
    for k in range(n):
        frames = open_video(video_folder / f"v{k}.mp4").frames_at([0.5, 1.5 + 0.4 * k])
        paths = []
        for j, fr in enumerate(frames):
            p = tmp_path / f"p{k}_{j}.png"
            Image.fromarray(fr.image).save(p)
            paths.append(p)
        reqs.append(PairRequest(f"c{k}/0", (paths[0], paths[1]), (0.5, 1.5), "src", caption="x" * k, temperature=0.0))
    return reqs


def test_inputs_expand_one_image_token_per_merged_patch(backend, video_folder, tmp_path):
    reqs = _pairs(video_folder, tmp_path)
    inputs = backend.encode(reqs)
    grids = inputs["image_grid_thw"]
    assert grids.shape == (6, 3)
    per_image = (grids.prod(dim=1) // 4).tolist()
    counts = (inputs["input_ids"] == backend.image_token_id).sum(dim=1).tolist()
    assert counts == [per_image[2 * i] + per_image[2 * i + 1] for i in range(3)]
    assert inputs["pixel_values"].shape[0] == int(grids.prod(dim=1).sum())
    # left padding: the last column is real for every row, and rows differ in length (captions differ)
    mask = inputs["attention_mask"]
    assert mask[:, -1].all() and len(set(mask.sum(dim=1).tolist())) == 3
    text = backend.chat_text(reqs[1])
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2


def test_left_padded_batch_matches_one_at_a_time(backend, video_folder, tmp_path):
    import torch

    reqs = _pairs(video_folder, tmp_path)
    with torch.no_grad():
        batched = backend.net(**backend.encode(reqs)).logits[:, -1]
        single = torch.cat([backend.net(**backend.encode([r])).logits[:, -1] for r in reqs])
    # different requests give different next-token logits, and padding changes none of them
    assert (single[0] - single[1]).abs().max() > 1e-4
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    replies = backend.generate(reqs)
    assert len(replies) == 3 and all(isinstance(r.text, str) and r.error is None for r in replies)


def test_cli_runs_the_local_model_and_fails_cleanly_on_its_garbage(runner, tiny_vlm, video_folder, tmp_path):
    out = tmp_path / "out"
    args = ["annotate", str(video_folder / "v0.mp4"), "--out-dir", str(out), *FAST, "--backend", "transformers",
            "--model", str(tiny_vlm), "--device", "cpu", "--max-tokens", "8", "--max-attempts", "2",
            "--batch-size", "2", "--image-size", "64", "--keep-going"]  # fmt: skip
    res = runner.invoke(main, args)
    assert res.exit_code == 3, res.stderr
    (fail,) = list(read_jsonl(out / "failures.jsonl"))
    assert fail["backend"] == "transformers" and fail["model"] == str(tiny_vlm)
    assert "no valid annotation after 2 attempts" in fail["reason"]
    assert all(len(v) == 2 and all(isinstance(x, str) for x in v) for v in fail["raw"].values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["attempts"] == 4 and summary["retries"] == 2


def test_unsupported_or_missing_models_are_usage_errors(runner, tmp_path):
    from vincie_cli.annotate.backends.transformers import TransformersBackend
    from vincie_cli.utils.io import UsageError

    with pytest.raises(UsageError, match="cannot load model"):
        TransformersBackend(str(tmp_path / "nope"))
    import transformers as T

    T.BertConfig(
        vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(UsageError, match="supports qwen2_vl, qwen2_5_vl"):
        TransformersBackend(str(tmp_path / "bert"))
