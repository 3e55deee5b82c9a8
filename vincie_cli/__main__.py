"""`python -m vincie_cli` runs the `vincie` command line (also under `accelerate launch -m vincie_cli`)."""

from vincie_cli.cli import main

if __name__ == "__main__":
    main()
