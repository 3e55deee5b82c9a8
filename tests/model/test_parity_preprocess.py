"""Parity of the image preprocessing chain with the release, on every image_*.png of the fixture set."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import torch
from safetensors.torch import load_file

from tests.model.parity_helpers import assert_close, tolerances
from vincie_cli.model.images import load_image, preprocess


def test_preprocess_matches_release(parity):
    folder = parity / "preprocess"
    refs = load_file(str(folder / "preprocess.safetensors"))
    meta_file = folder / "preprocess.json"
    info_json = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    meta = {m["png"]: m for m in info_json.get("images", [])}
    produced_by = info_json.get("produced_by", "")
    m = re.search(r"resolution=(\d+)", produced_by)
    resolution = int(m[1]) if m else 256
    m = re.search(r"aspect_ratio='([\w:]+)'", produced_by)
    aspect = m[1] if m else "keep_ratio"
    tol = tolerances(parity)["preprocess"]
    pngs = sorted(folder.glob("image_*.png"))
    assert pngs, f"no image_*.png in {folder}"
    for png in pngs:
        ref = refs[png.stem]
        out = preprocess(load_image(png), resolution=resolution, aspect=aspect, name=str(png))
        assert out.dtype == torch.float32 and out.shape == ref.shape, png.name
        assert_close(out, ref.float(), tol, png.name)
        info = meta.get(png.name, {}).get("output_fp32", {})
        sha = info.get("sha256_of_little_endian_C_order_bytes")
        if sha:  # bit-exact fp32 output
            digest = hashlib.sha256(out.contiguous().numpy().astype("<f4").tobytes()).hexdigest()
            assert digest == sha, f"{png.name}: fp32 output differs from the release (sha256)"
            assert np.isclose(out.double().sum().item(), info["sum"], rtol=0, atol=1e-6 * out.numel())
