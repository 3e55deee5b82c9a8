"""`vincie convert`: a released VINCIE folder (dit.pth, vae.pth, llm14b/) -> our self-describing folder."""

from __future__ import annotations

import click

from vincie_cli.cli._common import emit, handle_errors

EPILOG = """
\b
Examples:
  vincie convert ckpt/VINCIE-3B models/vincie-3b
  vincie convert ckpt/VINCIE-3B models/vincie-3b-bf16 --dtype bf16
  vincie convert ckpt/VINCIE-7B models/vincie-7b --skip-text     # keep using ckpt/VINCIE-7B/llm14b
"""


@click.command("convert", epilog=EPILOG)
@click.argument("release_dir", type=click.Path(file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option(
    "--dtype",
    type=click.Choice(["fp32", "bf16"]),
    default="fp32",
    show_default=True,
    help="Storage dtype of the DiT and VAE weights; bf16 also stores the text encoder in bf16.",
)
@click.option("--skip-text", is_flag=True, help="Leave out llm14b/ (load it later with text_path=...).")
@click.option(
    "--vae-config",
    type=click.Path(dir_okay=False),
    default=None,
    help="JSON with the VAE's constructor args when it differs from the release (GroupNorm groups are not in weights).",
)
@click.option(
    "--eod-tokens",
    type=click.Choice(["1", "2"]),
    default="1",
    show_default=True,
    help="EOD tokens after each prompt (the release is ambiguous here; see docs/loading.md).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists (only once the new folder is complete).")
@handle_errors
def convert(
    release_dir: str,
    out_dir: str,
    dtype: str,
    skip_text: bool,
    vae_config: str | None,
    eod_tokens: str,
    overwrite: bool,
) -> None:
    """Convert the released VINCIE-3B/7B weights into safetensors with their configs and tokenizer.

    Streams tensor by tensor (little more RAM than one tensor) into a temporary folder that is renamed
    to OUT_DIR at the end, so an interrupted run never leaves a folder that looks complete. Prints one
    "converted" JSON line with the parameter counts and the folder's sha256.
    """
    from vincie_cli.model.convert import convert_release, read_vae_config_file
    from vincie_cli.model.weights import dtype_from_name

    summary = convert_release(
        release_dir,
        out_dir,
        dtype=dtype_from_name(dtype),
        skip_text=skip_text,
        vae_config=read_vae_config_file(vae_config) if vae_config else None,
        eod_tokens=int(eod_tokens),
        overwrite=overwrite,
    )
    emit({"type": "converted", **summary})
