"""Image metrics of the MagicBrush protocol: L1, L2 (mean squared error), CLIP-I, CLIP-T and DINO.

Conventions of the canonical MagicBrush script, reproduced without torchvision:
- L1 / L2: RGB in [0, 1]; the generated image is resized to the ground-truth size with PIL's
  default filter (bicubic) first; L2 is the mean squared error, not its root.
- CLIP (ViT-B/32): shorter side to the model's input size (bicubic, PIL), centre crop, CLIP
  mean/std; image embedding = projected pooled output (`encode_image`); CLIP-T compares it with the
  projected text embedding of the caption (truncated to the model's 77 tokens).
- DINO (ViT-S/16): shorter side to 256 (bicubic), centre crop 224 (scaled with the model's input
  size), ImageNet mean/std; feature = the normalised CLS token of the last layer.
Scores are cosine similarities of those embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vincie_cli.utils.io import VincieError
from vincie_cli.utils.log import get_logger

log = get_logger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_DINO = "facebook/dino-vits16"
METRICS = ("l1", "l2", "clip_i", "clip_t", "dino")
HIGHER_IS_BETTER = {"l1": False, "l2": False, "clip_i": True, "clip_t": True, "dino": True, "clip_t_oracle": True}


# --------------------------------------------------------------------------------------------
# preprocessing (PIL + numpy)


def resize_shorter(img: Any, size: int) -> Any:
    """Shorter side to `size`, longer side scaled and truncated to an int (torchvision's Resize(int)), bicubic."""
    from PIL import Image

    w, h = img.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    return img if new == (w, h) else img.resize(new, Image.Resampling.BICUBIC)


def center_crop(img: Any, size: int) -> Any:
    """A size x size crop at the centre (offsets rounded like torchvision's CenterCrop)."""
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"image {w}x{h} smaller than the crop {size}")
    left = int(round((w - size) / 2.0))
    top = int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_chw(img: Any, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """RGB PIL image -> float32 [3, H, W], scaled to [0, 1] then normalised."""
    x = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def clip_pixels(img: Any, size: int) -> np.ndarray:
    return to_chw(center_crop(resize_shorter(img.convert("RGB"), size), size), CLIP_MEAN, CLIP_STD)


def dino_pixels(img: Any, crop: int) -> np.ndarray:
    resize = int(round(crop * 256 / 224))
    return to_chw(center_crop(resize_shorter(img.convert("RGB"), resize), crop), IMAGENET_MEAN, IMAGENET_STD)


def pixel_distances(generated: Any, truth: Any) -> tuple[float, float]:
    """(L1, L2) between two RGB images in [0, 1], the generated one resized to the truth's size."""
    from PIL import Image

    gen = generated.convert("RGB")
    gt = truth.convert("RGB")
    if gen.size != gt.size:
        gen = gen.resize(gt.size, Image.Resampling.BICUBIC)
    d = np.asarray(gen, np.float64) / 255.0 - np.asarray(gt, np.float64) / 255.0
    return float(np.abs(d).mean()), float((d * d).mean())


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of [N, D] arrays."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return num / np.maximum(den, 1e-12)


# --------------------------------------------------------------------------------------------
# models


def _load_error(kind: str, name: str, option: str, e: Exception) -> VincieError:
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return VincieError(
        f"{kind} model {name!r} could not be loaded ({first}); pass {option} with a local folder "
        f"(a saved copy of the model) or run where the hub is reachable"
    )


def load_clip(name: str, device: str = "cpu") -> tuple[Any, Any]:
    """A transformers CLIPModel and its tokenizer, from a hub id or a local folder."""
    from transformers import AutoTokenizer, CLIPModel

    try:
        model = CLIPModel.from_pretrained(name)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise _load_error("CLIP", name, "--clip-model", e) from None
    return model.eval().to(device), tokenizer


def load_dino(name: str, device: str = "cpu") -> Any:
    """A DINO ViT (transformers ViTModel, e.g. facebook/dino-vits16) or a DINOv2 model."""
    from transformers import AutoConfig, AutoModel, Dinov2Model, ViTModel

    try:
        config = AutoConfig.from_pretrained(name)
        if config.model_type == "vit":
            model = ViTModel.from_pretrained(name, add_pooling_layer=False)
        elif config.model_type == "dinov2":
            model = Dinov2Model.from_pretrained(name)
        else:
            model = AutoModel.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise _load_error("DINO", name, "--dino-model", e) from None
    return model.eval().to(device)


def _pooled(out: Any) -> Any:
    """transformers >= 5 returns a model output from get_*_features; older versions a tensor."""
    return out.pooler_output if hasattr(out, "pooler_output") else out


class FeatureExtractor:
    """Batched CLIP / DINO embeddings; each model is used only if given."""

    def __init__(
        self,
        clip: tuple[Any, Any] | None = None,
        dino: Any | None = None,
        device: str = "cpu",
        batch_size: int = 16,
    ) -> None:
        self.clip_model, self.clip_tokenizer = clip if clip is not None else (None, None)
        self.dino = dino
        self.device = device
        self.batch_size = batch_size
        self.truncated_captions = 0

    def _run(self, arrays: list[np.ndarray], fn: Any) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(arrays), self.batch_size):
            x = torch.from_numpy(np.stack(arrays[i : i + self.batch_size])).to(self.device)
            with torch.inference_mode():
                out.append(fn(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def clip_images(self, images: list[Any]) -> np.ndarray:
        """[N, D] projected CLIP image embeddings."""
        assert self.clip_model is not None
        size = self.clip_model.config.vision_config.image_size
        dtype = next(self.clip_model.parameters()).dtype
        arrays = [clip_pixels(im, size) for im in images]
        return self._run(arrays, lambda x: _pooled(self.clip_model.get_image_features(pixel_values=x.to(dtype))))

    def clip_texts(self, texts: list[str]) -> np.ndarray:
        """[N, D] projected CLIP text embeddings (captions over the model's length are truncated)."""
        import torch

        assert self.clip_model is not None
        max_len = self.clip_model.config.text_config.max_position_embeddings
        out = []
        for i in range(0, len(texts), self.batch_size):
            chunk = texts[i : i + self.batch_size]
            full = self.clip_tokenizer(chunk)["input_ids"]
            self.truncated_captions += sum(1 for ids in full if len(ids) > max_len)
            tok = self.clip_tokenizer(chunk, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            with torch.inference_mode():
                feats = self.clip_model.get_text_features(
                    input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
                )
            out.append(_pooled(feats).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def dino_images(self, images: list[Any]) -> np.ndarray:
        """[N, D] DINO CLS features of the last (normalised) layer."""
        assert self.dino is not None
        crop = self.dino.config.image_size
        dtype = next(self.dino.parameters()).dtype
        arrays = [dino_pixels(im, crop) for im in images]
        return self._run(arrays, lambda x: self.dino(pixel_values=x.to(dtype)).last_hidden_state[:, 0])
