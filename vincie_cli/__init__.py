"""vincie: learn multi-turn, in-context image editing from videos (VINCIE, arXiv 2506.10941).

Nothing heavy is imported here, so `vincie --help` stays instant.
"""

__version__ = "0.1.0"
