"""The VINCIE network: packed MM-DiT (`dit`), its layers, VAE, text encoders, image processing, conditioning.

Import the submodules directly (`from vincie_cli.model.dit import VincieTransformer`); this package
file stays import-light so the CLI can import `vincie_cli.model` without pulling in torch.
"""
