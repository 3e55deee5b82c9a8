"""Training: recipes, context composition, both conditioning layouts, token-budget batching, the loop.

Import the submodules directly (`from vincie_cli.train.recipe import load_recipe`); this file stays
import-light so the CLI can import it without torch.

- `recipe.py`: the `Recipe` dataclasses, YAML loading with `--set` overrides, printing, saving.
- `composition.py`: which frames, masks and texts a training session holds (NIP / CSP / NSP, dropout).
- `layouts.py`: the released channel layout and the paper's token layout, for training and for inference
  (`make_denoiser`, used by `vincie edit`).
- `batching.py`: preprocessing and token-budget packing with aspect-ratio buckets.
- `loop.py`: `setup` / `fit` / `train_step` on accelerate; `checkpoint.py`, `ema.py`, `optim.py`,
  `lora.py` (peft adapters), `validate.py` (validation editing sessions and image grids).
"""
