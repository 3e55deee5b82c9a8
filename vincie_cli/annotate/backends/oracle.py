"""The synthetic world's oracle: the annotation a perfect VLM would write, from the exact ground truth.

Only for videos made by `vincie_cli.synth` (a `.gt.json` beside the mp4); any other video is refused.
The reply goes through the same parsing and validation as a model's, so oracle runs exercise the
whole pipeline.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from vincie_cli.annotate.backends.base import Backend, PairRequest, Reply
from vincie_cli.utils.io import BadInputError


def phrase_seed(seed: int, gt: Any, source: str, t0: float, t1: float) -> str:
    """The seed of one pair's wording: a VLM words every pair its own way, and one seed for every pair
    would give every instruction of a kind the same template (the video's seed, else its file name)."""
    ident = gt.seed if gt.seed is not None else Path(source).name
    return f"{seed}:{ident}:{t0:.4f}:{t1:.4f}"


class OracleBackend(Backend):
    name = "oracle"
    model = "synth-oracle"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._gt: dict[str, Any] = {}
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def _ground_truth(self, source: str) -> Any:
        from vincie_cli.synth import find_ground_truth, load_ground_truth

        with self._lock:
            if source not in self._gt:
                path = find_ground_truth(source)
                if path is None:
                    raise BadInputError(
                        f"{source}: no synthetic ground truth beside it (<name>.gt.json); "
                        "--backend oracle only annotates videos made by the synthetic world"
                    )
                self._gt[source] = load_ground_truth(path)
            return self._gt[source]

    def check_source(self, path: str) -> None:
        self._ground_truth(path)

    def generate(self, requests: list[PairRequest]) -> list[Reply]:
        from vincie_cli.synth.oracle import annotate_pair

        out = []
        for req in requests:
            gt = self._ground_truth(req.source)
            seed = phrase_seed(self.seed, gt, req.source, *req.times)
            ann = annotate_pair(gt, req.times[0], req.times[1], seed=seed)
            out.append(Reply(text=json.dumps(ann, ensure_ascii=False)))
        return out
