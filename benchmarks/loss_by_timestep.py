"""Where along the noise schedule a checkpoint is good: its training loss with every target at one timestep.

    python benchmarks/loss_by_timestep.py runs/mini/step-00002000 --set data.sources=[data/sessions]
    python benchmarks/loss_by_timestep.py runs/mini/step-00002000 --zero     # and a network that outputs 0
    python benchmarks/loss_by_timestep.py runs/mini/step-00002000 --no-text  # and with every text blanked

Loads the checkpoint's own recipe (`recipe.yaml` in the step folder) with `model.init` set to it and
`train.seed` set to 0 (the seed composes the batches, so checkpoints of runs with different seeds are scored
on the same ones; `--set train.seed=N` draws others), draws `--batches` training batches once, and for each
t/T in `--t` runs the real loss (`train.loop.make_inputs` with that t, `train.loop.target_loss`, the recipe's
`flow.loss`, always as a squared error and without `flow.changed_share`'s weights, whatever `flow.loss_norm`
and the share were, so that runs compare) with the same noise. Prints one JSON
line per t with the loss per task (nip: images, csp / nsp: masks), and the images' loss split into the
positions their edit changed (`nip_changed`: mean squared difference from the source image above
`flow.changed_threshold`) and the rest (`nip_kept`).
`--zero` adds the loss of a network whose output is all zeros: for `prediction: x0_source` that is the
linear guess, which at t = T is the source image unchanged; a model that scores worse than that at high t
has not learned the edits (docs/training.md, "Loss and timesteps"). `--no-text` adds the model's loss
with every instruction blanked (as text dropout does): the gap at high t is what reading the instructions
is worth to it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_T = (0.1, 0.25, 0.5, 0.75, 0.9, 0.97, 1.0)


def loss_by_timestep(
    checkpoint: str,
    t_fracs=DEFAULT_T,
    batches: int = 3,
    seed: int = 0,
    sets=(),
    zero: bool = False,
    no_text: bool = False,
    sessions=None,
) -> list[dict]:
    """One row per t/T in `t_fracs`: {"t", "model": {group: loss}, and "zero" / "no_text" when asked}."""
    import torch

    from vincie_cli.flow.loss import token_mse
    from vincie_cli.flow.schedule import T_MAX
    from vincie_cli.model.layouts import GROUP_ID, GROUPS, X0_T_MIN, output_velocity
    from vincie_cli.train import loop as L
    from vincie_cli.train.recipe import load_recipe

    ck = Path(checkpoint)
    recipe = ck / "recipe.yaml"
    # train.seed composes the batches: pinned, so that checkpoints of runs with other seeds see the same ones
    r = load_recipe(recipe if recipe.is_file() else "mini", [f"model.init={ck}", "train.seed=0", "eval.every=0",
                    "log.tensorboard=false", *sets])  # fmt: skip
    out = Path(tempfile.mkdtemp(prefix="loss-by-t-"))
    rows = []
    try:
        state = L.setup(r, out_dir=out, sessions=sessions)
        data = [state.batcher.next_batch() for _ in range(batches)]
        blank = [[_blanked(p, state.preparer) for p in batch] for batch in data] if no_text else None
        state.trainer.eval()
        for frac in t_fracs:
            sums = {k: torch.zeros(len(GROUPS) + 2) for k in ("model", "zero", "no_text")}
            counts = torch.zeros(len(GROUPS) + 2)
            names = [*GROUPS, "nip_changed", "nip_kept"]
            t = frac * T_MAX
            with torch.no_grad():
                for i, batch in enumerate(data):
                    packed = L.make_inputs(state, batch, torch.Generator().manual_seed(seed + i), timestep=t)
                    outs = {"model": state.trainer(packed).float()}
                    if zero:  # the velocity that a raw network output of zeros gives
                        z = torch.zeros_like(outs["model"])
                        if packed.prediction != "velocity":
                            z = output_velocity(packed.prediction, packed.vid, z, packed.row_timesteps()).float()
                        outs["zero"] = z
                    if no_text:  # the same noise: no random draw depends on the texts
                        p2 = L.make_inputs(state, blank[i], torch.Generator().manual_seed(seed + i), timestep=t)
                        outs["no_text"] = state.trainer(p2).float()
                    nip = packed.groups == GROUP_ID["nip"]
                    changed = packed.row_changed if packed.row_changed is not None else torch.zeros_like(nip)
                    split = (nip & changed, nip & ~changed)
                    scale = max(frac, X0_T_MIN) ** 2 if r.flow.loss == "x0" else 1.0
                    for name, o in outs.items():
                        p = p2 if name == "no_text" else packed
                        _, per_group, present = L.target_loss(o, p, r.flow.loss, row_weights=False)
                        per = token_mse(o[p.loss_rows], p.target) * scale
                        parts = torch.stack([per[m].sum() / max(int(m.sum()), 1) for m in split])
                        sums[name] += torch.cat([torch.where(present, per_group, 0), parts])
                    counts += torch.cat([present.float(), torch.tensor([float(m.any()) for m in split])])
            row = {"type": "bench", "bench": "loss_by_timestep", "t": t}
            for name in outs:
                row[name] = {g: float(sums[name][k] / counts[k]) for k, g in enumerate(names) if counts[k] > 0}
            rows.append(row)
        state.lock.release()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return rows


def _blanked(prepared, preparer):
    """A prepared session with every step text "" (the unconditional branch of text dropout)."""
    import dataclasses

    comp = dataclasses.replace(prepared.comp, texts=[""] * len(prepared.comp.texts))
    lens = [preparer.tokenize("") + 1 for _ in comp.texts]
    return dataclasses.replace(prepared, comp=comp, step_lens=lens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a training checkpoint folder (runs/NAME/step-N) or a model folder")
    ap.add_argument("--t", type=float, nargs="+", default=list(DEFAULT_T), help="timesteps as fractions of T")
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zero", action="store_true", help="also the loss of a network that outputs zeros")
    ap.add_argument("--no-text", action="store_true", help="also the model's loss with every text blanked")
    ap.add_argument("--set", action="append", default=[], help="recipe override, e.g. data.sources=[data/sessions]")
    args = ap.parse_args()
    for row in loss_by_timestep(args.checkpoint, args.t, args.batches, args.seed, args.set, args.zero, args.no_text):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
