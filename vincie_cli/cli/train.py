"""`vincie train RECIPE.yaml`: session training (next-image, current- and next-segmentation prediction)."""

from __future__ import annotations

import click

from vincie_cli.cli._common import emit, handle_errors

EPILOG = """
\b
Examples:
  vincie train recipes/tiny.yaml --set data.sources=[data/sessions] --out-dir runs/tiny
  vincie train recipes/mini.yaml --resume --out-dir runs/mini         # continue from runs/mini/latest
  vincie train mini --print-config                                     # a packaged recipe, by name
  accelerate launch --config_file recipes/accelerate/8gpu.yaml -m vincie_cli train recipes/3b.yaml
"""


@click.command("train", epilog=EPILOG)
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe value (YAML), e.g. --set optim.lr=3e-4 --set data.sources=[a,b]; repeatable.",
)
@click.option("--out-dir", default=None, help="Where checkpoints go (default: the recipe's out_dir, else runs/NAME).")
@click.option("--resume", is_flag=True, help="Continue from OUT_DIR/latest (starts fresh when there is none).")
@click.option("--print-config", is_flag=True, help="Print the resolved recipe as YAML and exit.")
@handle_errors
def train(recipe: str, overrides: tuple[str, ...], out_dir: str | None, resume: bool, print_config: bool) -> None:
    """Train a VINCIE model on session shards as the RECIPE describes.

    RECIPE is a YAML file, or the name of a recipe that ships with vincie: tiny, mini, 3b, 7b, sft.

    Every step trains next-image prediction and, where RoE masks exist, current- and next-segmentation
    prediction; every checkpoint (OUT_DIR/step-XXXXXXXX/) is a model folder that `vincie edit --model`
    loads. stdout: one "train_event" JSON line per log interval, checkpoint, validation and at the end.
    """
    from vincie_cli.train.recipe import load_recipe, recipe_yaml

    r = load_recipe(recipe, overrides)
    if print_config:
        click.echo(recipe_yaml(r), nl=False)
        return
    from vincie_cli.train.loop import train as run

    run(r, out_dir=out_dir, resume=resume, emit=emit)
