"""The oracle segmenter for synthetic videos: exact RoE masks from the synthetic world's ground truth.

Only for clips whose source video has a ground-truth file beside it (`vincie_cli.synth`); anything
else is a clear error. The masks and the rule are exactly `synth.oracle.roe_masks` for the frames
shown at the clip's frame times, cropped and resized (nearest) the way `annotate` cropped and resized
the saved frames; boxes are the changed objects' tight boxes, labelled by object id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vincie_cli.records import normalize_annotation, resolve_path
from vincie_cli.segment.roe import Detection, RoEResult, box_of, entity_queries
from vincie_cli.utils.io import BadInputError


class OracleSegmenter:
    """ClipSegmenter that reads the synthetic ground truth of each clip's source video."""

    name = "oracle"
    model = "synth-ground-truth"

    def __init__(self) -> None:
        self._gt_cache: dict[Path, Any] = {}

    def _ground_truth(self, rec: dict[str, Any], base_dir: Path, where: str) -> Any:
        from vincie_cli.synth import find_ground_truth, load_ground_truth

        source = rec.get("source")
        if not source:
            raise BadInputError(f"{where}: the oracle backend needs the clip's source video (no 'source' field)")
        video = resolve_path(str(source), base_dir)
        gt_path = find_ground_truth(video)
        if gt_path is None:
            raise BadInputError(
                f"{where}: {video} is not a synthetic video (no ground truth beside it); "
                "--backend oracle works only on `vincie synth` videos, use --backend grounded-sam2"
            )
        gt_path = gt_path.resolve()
        if gt_path not in self._gt_cache:
            self._gt_cache = {gt_path: load_ground_truth(gt_path)}  # keep one video in memory
        return self._gt_cache[gt_path]

    def segment_clip(
        self, rec: dict[str, Any], frames: list[np.ndarray], base_dir: Path | None = None, where: str = "record"
    ) -> list[RoEResult | None]:
        from vincie_cli.synth.oracle import roe_masks

        gt = self._ground_truth(rec, Path(base_dir or "."), where)
        out: list[RoEResult | None] = []
        for i, tr in enumerate(rec["transitions"]):
            if tr.get("annotation") is None:
                out.append(None)
                continue
            ann = normalize_annotation(tr["annotation"], f"{where}: transitions[{i}].annotation")
            times = [rec["frames"][tr[k]].get("time") for k in ("src", "dst")]
            if any(t is None for t in times):
                raise BadInputError(f"{where}: transitions[{i}]: the oracle needs frame times")
            roe = roe_masks(gt, float(times[0]), float(times[1]))
            crop = rec.get("crop")
            src_hw, dst_hw = frames[tr["src"]].shape[:2], frames[tr["dst"]].shape[:2]
            src = _to_frame(roe.src, crop, src_hw, f"{where}: frame {tr['src']}")
            dst = _to_frame(roe.dst, crop, dst_hw, f"{where}: frame {tr['dst']}")
            src_q, dst_q = entity_queries(ann)
            res = RoEResult(roe.rule, src, dst, src_q, dst_q)
            if roe.rule == "entities":
                i0, i1 = gt.frame_index(float(times[0])), gt.frame_index(float(times[1]))
                res.src_detections = _boxes(gt.instance_masks(i0), roe.entities, crop, src_hw, where)
                res.dst_detections = _boxes(gt.instance_masks(i1), roe.entities, crop, dst_hw, where)
            out.append(res)
        return out


def _to_frame(mask: np.ndarray | None, crop: list[int] | None, hw: tuple[int, int], where: str) -> np.ndarray | None:
    """A video-sized mask as the saved frame sees it: `annotate`'s crop (x0, y0, x1, y1), then its resize."""
    if mask is None:
        return None
    if crop:
        x0, y0, x1, y1 = (int(v) for v in crop)
        mask = mask[y0:y1, x0:x1]
    h, w = mask.shape
    if (h, w) == tuple(hw):
        return mask
    if abs(w / h - hw[1] / hw[0]) > 0.02 * (w / h) + 1.0 / min(hw):
        raise BadInputError(
            f"{where} is {hw[1]}x{hw[0]} but the (cropped) video is {w}x{h}: not a resize of the video frame, "
            "so the oracle cannot place its masks"
        )
    from PIL import Image

    return np.asarray(Image.fromarray(mask).resize((hw[1], hw[0]), Image.Resampling.NEAREST), dtype=bool)


def _boxes(
    instances: dict[str, np.ndarray], ids: tuple[str, ...], crop: list[int] | None, hw: tuple[int, int], where: str
) -> list[Detection]:
    dets = []
    for oid in ids:
        m = instances.get(oid)
        if m is None:
            continue
        m = _to_frame(m, crop, hw, where)
        if m is not None and (box := box_of(m)) is not None:
            dets.append(Detection(oid, box, 1.0, m))
    return dets
