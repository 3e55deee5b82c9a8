"""Where does a model look to fill a blank? For training sessions, blank a rectangle of a turn's source
image over content the first image holds at the same place (as `tasks.degrade_erase_at: kept` does), predict
the turn in one step from t = 1000 (what the 1-step sampler returns), and take the gradient of the prediction
inside the rectangle, along the direction that would restore it (truth - blank), with respect to the inputs.

    python benchmarks/context_sensitivity.py runs/mini-c29/step-00000800 recipes/mini.yaml \
        --set data.sources=[data/sessions2] --batches 4

Per input position, the gradient's norm over channels, averaged over sessions:
- `first_same`: the first image (context) at the rectangle's positions: where the answer is;
- `first_other`: the first image elsewhere;
- `source_same`: the turn's (blanked) source channels at the rectangle's positions, and `source_net_same`
  the same less the prediction's own identity path (x̂0 = source + source_sigma * output at t = T, so the
  source alone contributes the restore direction itself): what the network adds.
A model that restores from its context has `first_same` well above `first_other` and comparable to
`source_net_same`; one that keeps what its source shows has it near `first_other`. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sensitivity(model: str | Path, recipe_path: str | Path, overrides: list[str], batches: int, side: int = 4,
                seed: int = 0) -> dict[str, float]:  # fmt: skip
    """{"sessions", "first_same", "first_other", "source_same", "source_net_same", "same_over_other"} (see the
    module doc)."""
    import torch

    from vincie_cli.flow.schedule import T_MAX, add_noise, x0_from_v
    from vincie_cli.model.layouts import (
        image_frames,
        kept_content,
        pack_samples,
        run_dit,
        source_frame,
        training_samples,
    )
    from vincie_cli.train import loop
    from vincie_cli.train.recipe import load_recipe

    sets = [*overrides, f"model.init={model}", "train.threads=1", "tasks.drop_current_frame=0"]
    recipe = load_recipe(Path(recipe_path), sets)
    thr = recipe.flow.changed_threshold
    gen = torch.Generator().manual_seed(seed)
    sums = {"first_same": 0.0, "first_other": 0.0, "source_same": 0.0, "source_net_same": 0.0}
    n = 0
    with tempfile.TemporaryDirectory() as tmp:
        state = loop.setup(recipe, Path(tmp) / "run")
        try:
            dit = state.dit.eval()
            for _ in range(batches):
                batch = state.batcher.next_batch()
                latents = loop.encode_batch(state, batch, gen)
                texts = list(dict.fromkeys(t for p in batch for t in p.comp.texts))
                with torch.no_grad():
                    encoded = dict(zip(texts, state.model.encode_prompts(texts)))
                for p, lat in zip(batch, latents):
                    tasks = p.comp.tasks
                    is_image = image_frames(tasks, len(lat))
                    hidden = [False] * len(lat)
                    # the last image target whose source (the latest image before it) is not the first image
                    js = [j for j in p.comp.targets if is_image[j] and (source_frame(j, is_image, hidden) or 0) >= 1]
                    if not js:
                        continue
                    j = js[-1]
                    f = source_frame(j, is_image, hidden)
                    where = kept_content(lat[f], lat[0], thr) * kept_content(lat[j], lat[0], thr)
                    if float(where.sum()) == 0:
                        continue  # nothing of the first image left in place in both frames
                    h, w, c = lat[f].shape
                    cy, cx = divmod(int(torch.multinomial(where.reshape(-1), 1, generator=gen)), w)
                    y0, x0 = min(max(cy - side // 2, 0), h - side), min(max(cx - side // 2, 0), w - side)
                    box = torch.zeros(h, w, dtype=torch.bool)
                    box[y0 : y0 + side, x0 : x0 + side] = True
                    blank = lat[f].clone()
                    blank[box] = lat[f].mean(dim=(0, 1))
                    samples = training_samples(
                        state.spec, lat[: j + 1], hidden[: j + 1], [j], tasks[:j], p.step_lens[:j],
                        {j: float(T_MAX)}, gen, state.preparer.patch, {}, 0.0, seen_frames={f: blank},
                    )  # fmt: skip
                    steps = [encoded[t] for t in p.comp.texts]
                    packed = pack_samples(samples, [steps], [0], state.spec, "cpu", "dense")
                    packed.vid.requires_grad_(True)
                    v = run_dit(dit, packed).float()
                    rows = packed.loss_rows
                    _, _, _, x0_true, eps, _ = samples[0].loss[0]
                    x0_hat = x0_from_v(add_noise(x0_true, eps, float(T_MAX)), v[rows], float(T_MAX))
                    restore = (lat[j] - blank).reshape(-1, c)  # the direction that puts the object back
                    flat = box.reshape(-1)
                    (x0_hat[flat] * restore[flat]).sum().backward()
                    g = packed.vid.grad
                    hw = h * w
                    first = g[:hw, :c].norm(dim=-1)  # frame 0, the first clean frame of the sample
                    src = g[rows, c : 2 * c]  # the target's source channels
                    net = src - restore * flat[:, None]  # less d(source)/d(source) along the objective
                    sums["first_same"] += float(first[flat].mean())
                    sums["first_other"] += float(first[~flat].mean())
                    sums["source_same"] += float(src.norm(dim=-1)[flat].mean())
                    sums["source_net_same"] += float(net.norm(dim=-1)[flat].mean())
                    n += 1
        finally:
            state.lock.release()
    out: dict[str, float] = {"sessions": n}
    out.update({k: (v / n if n else float("nan")) for k, v in sums.items()})
    out["same_over_other"] = out["first_same"] / out["first_other"] if n and out["first_other"] > 0 else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a checkpoint or model folder (its DiT is probed)")
    ap.add_argument("recipe", help="a training recipe (its data, layout and threshold)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--side", type=int, default=4, help="the blank's side in latent positions")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from vincie_cli.utils.io import VincieError

    try:
        res = sensitivity(args.model, args.recipe, args.overrides, args.batches, args.side, args.seed)
    except VincieError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({"model": str(args.model), **{k: round(v, 6) for k, v in res.items()}}))


if __name__ == "__main__":
    main()
