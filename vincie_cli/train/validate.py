"""Validation editing sessions during training: generate turns with the inference path `vincie edit` uses
(`layouts.make_denoiser` + the Euler sampler), compare with the ground truth, save an image grid.

Per validation session: the first frame is the input; turns 1..n are generated one after the other, each
with every earlier frame (generated ones included) as context, like an editing session. The grid has two
rows per session: ground truth, then generated. PSNR per turn is reported (uint8 frames).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vincie_cli.utils.io import atomic_path


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


@torch.no_grad()
def generate_session(state, session, turns: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(ground-truth frames 0..n, generated frames 0..n) as uint8 (H, W, 3); frame 0 is the input in both."""
    from vincie_cli.flow.sampler import euler_sample
    from vincie_cli.flow.schedule import sampling_timesteps
    from vincie_cli.model.images import postprocess, preprocess
    from vincie_cli.model.layouts import make_denoiser
    from vincie_cli.prompts import TurnSpec, plan_session
    from vincie_cli.records import camera_tag
    from vincie_cli.train.batching import _float_image, _resize_to

    r = state.recipe
    model, dev = state.model, state.device
    n = min(turns, session.num_turns)
    H, W = session.frames[0].shape[:2]
    pixels = [
        preprocess(_resize_to(_float_image(session.frames[i]), (H, W), nearest=False), r.data.resolution)
        for i in range(n + 1)
    ]
    specs = [
        TurnSpec(session.texts[k], camera_tag(session.cameras[k]) if r.tasks.camera_prefix else "") for k in range(n)
    ]
    _, steps = plan_session(specs, template=r.tasks.template)
    vae = model.vae
    z0 = vae.encode(pixels[0][None].to(dev, vae.dtype))[0].float()
    context = [z0]
    states = model.encode_prompts([s.text for s in steps])
    empty = model.encode_prompts([""])[0]
    grid = sampling_timesteps(r.eval.steps, r.eval.shift)
    for k in range(n):
        neg = [empty] * (k + 1) if r.eval.cfg_scale != 1.0 else None
        den = make_denoiser(model.dit, state.spec, context, states[: k + 1], neg)
        g = torch.Generator().manual_seed(seed * 1000 + k)
        noise = torch.randn(den.state_shape, generator=g).to(dev)
        x = euler_sample(noise, den, grid.to(dev), cfg_scale=r.eval.cfg_scale, batched=True)
        context.append(den.target(x.float()))
    gen = [postprocess(vae.decode(z[None].to(vae.dtype))[0].float(), torch.float32) for z in context]
    gt = [postprocess(p, torch.float32) for p in pixels]
    gen[0] = gt[0]
    return gt, gen


def validate(state) -> dict[str, Any]:
    """Run every validation session, save `<out>/val/step-%08d.png`, return PSNR numbers and the path."""
    from PIL import Image

    r = state.recipe
    rows: list[list[np.ndarray]] = []
    psnr: dict[int, list[float]] = {}
    for i, s in enumerate(state.val_sessions):
        gt, gen = generate_session(state, s, r.eval.turns, r.eval.seed + i)
        for k in range(1, len(gt)):
            psnr.setdefault(k, []).append(_psnr(gt[k], gen[k]))
        rows += [gt, gen]
    cols = max(len(row) for row in rows)
    h = max(im.shape[0] for row in rows for im in row)
    w = max(im.shape[1] for row in rows for im in row)
    canvas = np.full((len(rows) * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for ri, row in enumerate(rows):
        for ci, im in enumerate(row):
            y, x = ri * (h + 2), ci * (w + 2)
            canvas[y : y + im.shape[0], x : x + im.shape[1]] = im
    path = state.out_dir / "val" / f"step-{state.step:08d}.png"
    if state.is_main:
        with atomic_path(path) as tmp:
            Image.fromarray(canvas).save(tmp, format="PNG")
    out: dict[str, Any] = {"path": str(path), "sessions": len(state.val_sessions)}
    allv = [v for vs in psnr.values() for v in vs]
    out["psnr"] = float(np.mean(allv)) if allv else None
    for k, vs in psnr.items():
        out[f"psnr_turn{k}"] = float(np.mean(vs))
    return out
