"""Package a trained `mini` checkpoint as the model shipped inside vincie (vincie_cli/assets/mini/).

    python tools/ship_mini.py runs/mini/step-00003000 --steps 20 --shift 3 --guidance 1 \
        --note "trained on 6000 synthetic videos, seeds 0-5999"

Writes the EMA weights with the DiT and the byte text encoder in fp16 (the loader upcasts; docs/mini.md
measures that the scores do not change), the sampling settings `vincie edit` should use with it, the
training recipe and a provenance file. The folder is an ordinary model folder:
`vincie edit --model vincie_cli/assets/mini`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch

    from vincie_cli.model.pipeline import VincieModel
    from vincie_cli.utils.io import atomic_write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "vincie_cli" / "assets" / "mini")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--shift", type=float, required=True)
    ap.add_argument("--guidance", type=float, required=True)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--note", default="")
    args = ap.parse_args()

    model = VincieModel.from_pretrained(args.checkpoint, attention="fp32")
    sampling = {"steps": args.steps, "shift": args.shift, "guidance": args.guidance, "resolution": args.resolution}
    model.config = dataclasses.replace(model.config, name="mini", sampling=sampling)
    if args.out.exists():
        shutil.rmtree(args.out)
    model.text_encoder.to(torch.float16)  # stored fp16; its config keeps fp32, so loading upcasts it
    model.save_pretrained(args.out, dtype=torch.float16)
    shutil.copy(args.checkpoint / "recipe.yaml", args.out / "recipe.yaml")
    state = json.loads((args.checkpoint / "trainer_state.json").read_text())
    atomic_write_json(
        args.out / "provenance.json",
        {
            "checkpoint": str(args.checkpoint),
            "step": state.get("step"),
            "last_loss": state.get("last_loss"),
            "weights": "EMA; DiT and text encoder stored as fp16, loaded as fp32",
            "sampling": sampling,
            "note": args.note,
        },
    )
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
