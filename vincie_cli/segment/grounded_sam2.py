"""GroundingDINO (text -> boxes) + SAM2 (boxes -> masks), both through transformers.

Detection: every image gets its own text prompt "q1 . q2 . ... ." (lower case, as GroundingDINO was
trained), built token by token so each query's token span is known exactly. A predicted box is kept
for query q when its best token score over the whole prompt exceeds `box_threshold` and its best
score over q's tokens exceeds `text_threshold` (q = the query with the highest such score); boxes of
one query then go through NMS and the `max_per_query` best are kept.

Segmentation: SAM2's image processor needs torchvision, so its documented preprocessing is done here
(`sam2_preprocess`: resize to S x S, bilinear with antialiasing, rounded to 8 bits, rescaled to [0, 1],
normalised with the ImageNet mean/std; boxes scaled by S/W, S/H). Images are encoded in batches; the
prompt decoder runs once per group of images with the same number of boxes; low-resolution mask
logits are upsampled (bilinear) to the frame size and thresholded at `mask_threshold`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vincie_cli.segment.roe import Detection
from vincie_cli.utils.io import UsageError, VincieError
from vincie_cli.utils.log import get_logger

if TYPE_CHECKING:
    import torch

log = get_logger(__name__)

DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-tiny"
DEFAULT_SEGMENTER = "facebook/sam2.1-hiera-tiny"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# SAM2 pre/post-processing (the documented behaviour of transformers' Sam2ImageProcessor/Sam2Processor)


@dataclass
class Sam2Preprocess:
    """SAM2 input normalisation: square input side `size`, per-channel mean and std (on [0, 1] values)."""

    size: int = 1024
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_pretrained(cls, path: str | Path, default_size: int) -> Sam2Preprocess:
        """Read size/mean/std from the checkpoint's preprocessor_config.json when there is one."""
        cfg = _preprocessor_config(path)
        size = cfg.get("size") or {}
        side = size.get("height") or size.get("longest_edge") or default_size if isinstance(size, dict) else size
        return cls(
            size=int(side or default_size),
            mean=tuple(cfg.get("image_mean") or IMAGENET_MEAN),  # type: ignore[arg-type]
            std=tuple(cfg.get("image_std") or IMAGENET_STD),  # type: ignore[arg-type]
        )


def _preprocessor_config(path: str | Path) -> dict[str, Any]:
    local = Path(path) / "preprocessor_config.json"
    if local.is_file():
        return json.loads(local.read_text())
    if Path(path).exists():
        return {}
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(str(path), "preprocessor_config.json")).read_text())
    except Exception:  # no processor config on the hub copy: the model config decides
        return {}


def sam2_preprocess(images: list[np.ndarray], prep: Sam2Preprocess) -> torch.Tensor:
    """uint8 (H, W, 3) images -> pixel values (B, 3, S, S) float32, as Sam2ImageProcessor computes them."""
    import torch
    import torch.nn.functional as F

    out = []
    for img in images:
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)[None].float()  # (1, 3, H, W), 0..255
        if x.shape[-2:] != (prep.size, prep.size):
            x = F.interpolate(x, size=(prep.size, prep.size), mode="bilinear", align_corners=False, antialias=True)
            x = x.round().clamp(0, 255)  # the processor resizes uint8 tensors, so values stay 8-bit
        out.append(x[0])
    px = torch.stack(out) / 255.0
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    return (px - mean) / std


def sam2_scale_boxes(boxes: np.ndarray, image_hw: tuple[int, int], size: int) -> np.ndarray:
    """Pixel boxes (N, 4) x0, y0, x1, y1 of an (H, W) image -> boxes in the S x S model input."""
    h, w = image_hw
    scale = np.array([size / w, size / h, size / w, size / h], dtype=np.float32)
    return boxes.astype(np.float32) * scale


def sam2_postprocess(low_res_logits: torch.Tensor, image_hw: tuple[int, int], threshold: float = 0.0) -> np.ndarray:
    """Mask logits (N, h, w) -> bool masks (N, H, W): bilinear upsampling to the image size, then > threshold."""
    import torch.nn.functional as F

    up = F.interpolate(low_res_logits[:, None].float(), size=image_hw, mode="bilinear", align_corners=False)
    return (up[:, 0] > threshold).cpu().numpy()


# --------------------------------------------------------------------------------------------
# box utilities


def cxcywh_to_xyxy(boxes: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Normalised (cx, cy, w, h) boxes (N, 4) -> pixel (x0, y0, x1, y1), clipped to the image."""
    h, w = image_hw
    cx, cy, bw, bh = boxes.T
    out = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], axis=1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (N, M) of pixel boxes a (N, 4) and b (M, 4)."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = (x1 - x0).clip(0) * (y1 - y0).clip(0)
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression; indices of the kept boxes, best first."""
    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        if order:
            ious = box_iou(boxes[i : i + 1], boxes[order])[0]
            order = [j for j, iou in zip(order, ious) if iou <= iou_threshold]
    return keep


# --------------------------------------------------------------------------------------------
# the backend


@dataclass
class GroundedSam2Options:
    detector: str = DEFAULT_DETECTOR
    segmenter: str = DEFAULT_SEGMENTER
    device: str = "cpu"
    dtype: str = "float32"
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    nms_iou: float = 0.7
    max_per_query: int = 3
    mask_threshold: float = 0.0
    batch_size: int = 8


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    table |= {"float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise UsageError(f"--dtype {name!r}: expected one of float32, bfloat16, float16")
    return table[name]


class GroundedSam2Backend:
    """Text-prompted instance masks: GroundingDINO boxes for each query, SAM2 masks for each box."""

    name = "grounded-sam2"

    def __init__(self, options: GroundedSam2Options) -> None:
        import torch
        from transformers import AutoTokenizer, GroundingDinoForObjectDetection, Sam2Model
        from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
            GroundingDinoImageProcessorPil,
        )

        self.options = options
        self.device = torch.device(options.device)
        self.dtype = _torch_dtype(options.dtype)
        try:
            self.detector = GroundingDinoForObjectDetection.from_pretrained(options.detector, use_safetensors=True)
            self.tokenizer = AutoTokenizer.from_pretrained(options.detector)
            self.det_processor = GroundingDinoImageProcessorPil.from_pretrained(options.detector)
            self.segmenter = Sam2Model.from_pretrained(options.segmenter, use_safetensors=True)
        except OSError as e:
            raise VincieError(
                f"cannot load the segmentation models {options.detector} / {options.segmenter}: "
                f"{str(e).splitlines()[0]}"
            ) from None
        self.detector.to(self.device, self.dtype).eval()
        self.segmenter.to(self.device, self.dtype).eval()
        self.sam_prep = Sam2Preprocess.from_pretrained(
            options.segmenter, self.segmenter.config.prompt_encoder_config.image_size
        )
        self.max_text_len = int(self.detector.config.max_text_len)
        self.dot_id = self.tokenizer.convert_tokens_to_ids(".")
        self.model = f"{options.detector}+{options.segmenter}"

    # -- text prompts --------------------------------------------------------------------------

    def build_prompt(self, queries: list[str]) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids "[CLS] q1 . q2 . [SEP]" and the (start, end) token span of each query.

        Queries that do not fit in the detector's `max_text_len` get an empty span (never detected).
        """
        ids = [self.tokenizer.cls_token_id]
        spans: list[tuple[int, int]] = []
        for q in queries:
            toks = self.tokenizer(q.lower().strip().rstrip("."), add_special_tokens=False)["input_ids"]
            if not toks or len(ids) + len(toks) + 2 > self.max_text_len:
                if toks:
                    log.warning("query %r does not fit in the detector's %d text tokens", q, self.max_text_len)
                spans.append((0, 0))
                continue
            spans.append((len(ids), len(ids) + len(toks)))
            ids.extend(toks)
            ids.append(self.dot_id)
        ids.append(self.tokenizer.sep_token_id)
        return ids, spans

    # -- detection -----------------------------------------------------------------------------

    def detect(self, images: list[np.ndarray], queries: list[list[str]]) -> list[list[tuple[str, list[float], float]]]:
        """GroundingDINO on a batch: per image, a list of (query, box xyxy pixels, score)."""
        import torch

        prompts = [self.build_prompt(q) for q in queries]
        seq = max(len(ids) for ids, _ in prompts)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(images), seq), pad, dtype=torch.long)
        attention = torch.zeros((len(images), seq), dtype=torch.long)
        for i, (ids, _) in enumerate(prompts):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
        enc = self.det_processor(images=list(images), return_tensors="pt")
        with torch.inference_mode():
            out = self.detector(
                pixel_values=enc["pixel_values"].to(self.device, self.dtype),
                pixel_mask=enc["pixel_mask"].to(self.device),
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                token_type_ids=torch.zeros_like(input_ids).to(self.device),
            )
        probs = out.logits.float().sigmoid().cpu().numpy()  # (B, Q, max_text_len); padding is -inf -> 0
        boxes = out.pred_boxes.float().cpu().numpy()  # (B, Q, 4) normalised cx, cy, w, h
        o = self.options
        results = []
        for i, img in enumerate(images):
            _, spans = prompts[i]
            hw = img.shape[:2]
            xyxy = cxcywh_to_xyxy(boxes[i], hw)
            best_any = probs[i].max(axis=1)  # (Q,)
            per_query = np.stack(
                [probs[i][:, s:e].max(axis=1) if e > s else np.zeros(len(xyxy)) for s, e in spans], axis=1
            )  # (Q, n_queries)
            owner = per_query.argmax(axis=1)
            dets = []
            for qi, q in enumerate(queries[i]):
                sel = np.nonzero((owner == qi) & (best_any > o.box_threshold) & (per_query[:, qi] > o.text_threshold))[
                    0
                ]
                valid = sel[(xyxy[sel, 2] > xyxy[sel, 0]) & (xyxy[sel, 3] > xyxy[sel, 1])]
                if len(valid) == 0:
                    continue
                keep = nms(xyxy[valid], per_query[valid, qi], o.nms_iou)[: o.max_per_query]
                for k in keep:
                    j = valid[k]
                    dets.append((q, [round(float(v), 2) for v in xyxy[j]], round(float(per_query[j, qi]), 4)))
            results.append(dets)
        return results

    # -- segmentation --------------------------------------------------------------------------

    def segment_boxes(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """SAM2 masks for pixel boxes (N_i, 4) per image -> bool (N_i, H, W) per image."""
        import torch

        out: list[np.ndarray] = [np.zeros((0, *img.shape[:2]), bool) for img in images]
        todo = [i for i, b in enumerate(boxes) if len(b)]
        if not todo:
            return out
        size = self.sam_prep.size
        pixels = sam2_preprocess([images[i] for i in todo], self.sam_prep).to(self.device, self.dtype)
        with torch.inference_mode():
            embeddings = self.segmenter.get_image_embeddings(pixels)
            groups: dict[int, list[int]] = {}
            for row, i in enumerate(todo):
                groups.setdefault(len(boxes[i]), []).append(row)
            for rows in groups.values():
                idx = torch.tensor(rows, device=self.device)
                scaled = [sam2_scale_boxes(boxes[todo[r]], images[todo[r]].shape[:2], size) for r in rows]
                res = self.segmenter(
                    image_embeddings=[e.index_select(0, idx) for e in embeddings],
                    input_boxes=torch.from_numpy(np.stack(scaled)).to(self.device, self.dtype),
                    multimask_output=False,
                )
                logits = res.pred_masks[:, :, 0]  # (G, N, h, w)
                for g, r in enumerate(rows):
                    out[todo[r]] = sam2_postprocess(logits[g], images[todo[r]].shape[:2], self.options.mask_threshold)
        return out

    # -- both ----------------------------------------------------------------------------------

    def __call__(self, images: list[np.ndarray], queries: list[list[str]]) -> list[list[Detection]]:
        """Detections with masks for each image (uint8 (H, W, 3)) and its text queries, in batches."""
        results: list[list[Detection]] = [[] for _ in images]
        todo = [i for i, q in enumerate(queries) if q]
        bs = max(1, self.options.batch_size)
        for start in range(0, len(todo), bs):
            chunk = todo[start : start + bs]
            imgs = [images[i] for i in chunk]
            found = self.detect(imgs, [queries[i] for i in chunk])
            boxes = [np.array([b for _, b, _ in f], dtype=np.float32).reshape(-1, 4) for f in found]
            masks = self.segment_boxes(imgs, boxes)
            for i, f, m in zip(chunk, found, masks):
                results[i] = [Detection(q, b, s, m[k]) for k, (q, b, s) in enumerate(f)]
        return results
