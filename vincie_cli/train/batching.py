"""From sessions to micro-batches: composition, preprocessing, aspect-ratio buckets, token-budget packing.

Each session is composed (`composition.compose`, with an RNG fixed by its stream position) and its frames
are preprocessed like the release (later frames resized to the first frame's size, area resize to
`data.resolution`², crop to multiples of 16, [-1, 1]); with `data.aspect: adaptive` every session is first
centre-cropped to the nearest of `data.aspect_buckets`, so the whole run uses a handful of shapes. Masks
become RGB images (white region on black) through the same transform.

Packing: sessions are taken in stream order and added to the micro-batch while its token count (patched
video + text tokens of every DiT sample the layout makes, the quantity attention and the MLPs scale with)
stays within `train.tokens_per_batch`; the session that does not fit opens the next micro-batch. Keeping
stream order (no reordering by bucket) makes `--resume` exact: the checkpoint stores the dataset position
*before* the session carried over. A session larger than the budget alone is cut to fewer turns until it
fits (at least one turn).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vincie_cli.model.layouts import LayoutSpec
from vincie_cli.train.composition import Composition, compose, session_rng
from vincie_cli.utils.io import UsageError
from vincie_cli.utils.log import get_logger

log = get_logger(__name__)


@dataclass
class Prepared:
    """One composed session, ready to encode."""

    session: Any
    comp: Composition
    pixels: list[Tensor] | None  # (3, H, W) in [-1, 1] per stack frame (None when latents come from the cache)
    latents: list[Tensor] | None  # cached (h, w, C) per stack frame
    latent_hw: tuple[int, int]
    step_lens: list[int]  # text tokens per step, turn embedding included
    tokens: int  # tokens this session adds to a micro-batch


def layout_tokens(spec: LayoutSpec, comp: Composition, frame_tokens: int, step_lens: list[int]) -> int:
    """Patched video + text tokens of the DiT samples `layouts.training_samples` makes for `comp`."""
    if not comp.targets:
        return 0
    if spec.kind == "released":
        return sum((j + 1) * frame_tokens + sum(step_lens[:j]) for j in comp.targets)
    if spec.attention == "block_causal":
        last = max(comp.targets)
        clean = sum(1 for f in range(last) if not comp.hidden[f])
        return (clean + len(comp.targets)) * frame_tokens + sum(step_lens[:last])
    return sum(
        (sum(1 for f in range(j) if not comp.hidden[f]) + 1) * frame_tokens + sum(step_lens[:j]) for j in comp.targets
    )


def _float_image(arr: np.ndarray) -> Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(arr, dtype=np.uint8, order="C")).permute(2, 0, 1).float().div_(255)


def _mask_image(mask: np.ndarray) -> Tensor:
    """bool (H, W) -> float (3, H, W): white region on black."""
    return torch.from_numpy(np.array(mask, dtype=np.float32, order="C"))[None].expand(3, -1, -1).contiguous()


def _resize_to(x: Tensor, size: tuple[int, int], nearest: bool) -> Tensor:
    """(3, H, W) float -> (3, h, w); bicubic (antialiased, clamped like a PIL round trip) or nearest."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if nearest:
        return F.interpolate(x[None], size=size, mode="nearest")[0]
    return F.interpolate(x[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0].clamp_(0, 1)


def bucket_of(height: int, width: int, buckets: list[str]) -> str:
    """The bucket "w:h" whose aspect ratio is closest (in log space) to the image's."""
    target = np.log(width / height)
    return min(buckets, key=lambda r: abs(np.log(int(r.split(":")[0]) / int(r.split(":")[1])) - target))


class Preparer:
    """Session -> `Prepared` under a recipe (composition, preprocessing, token counts)."""

    def __init__(self, recipe, spec: LayoutSpec, tokenize: Callable[[str], int], factor: int, patch: tuple[int, int]):
        self.recipe = recipe
        self.spec = spec
        self.tokenize = tokenize  # text -> number of valid tokens
        self.factor = factor
        self.patch = patch

    def frame_size(self, height: int, width: int) -> tuple[int, int, str]:
        """(H', W') after preprocessing a first frame of (height, width), and the aspect option used."""
        from vincie_cli.model.images import CROP_MULTIPLE, area_size, aspect_crop_box

        data = self.recipe.data
        aspect = "keep_ratio"
        if data.aspect == "adaptive":
            aspect = bucket_of(height, width, data.aspect_buckets)
            t, b, le, ri = aspect_crop_box(height, width, aspect)
            height, width = b - t, ri - le
        h, w = area_size(height, width, data.resolution)
        return h - h % CROP_MULTIPLE, w - w % CROP_MULTIPLE, aspect

    def prepare(self, session, turns_cap: int | None = None) -> Prepared | None:
        """Compose and preprocess one session; None for a session without turns."""
        if session.num_turns < 1:
            return None
        r = self.recipe
        max_targets = r.tasks.max_targets if (self.spec.kind == "released" or self.spec.attention == "full") else 0
        comp = compose(session, r.tasks, session_rng(r.train.seed, session), r.data.max_turns, max_targets, turns_cap)
        step_lens = [self.tokenize(t) + 1 for t in comp.texts]
        cache = session.cache
        latents = None
        if r.data.use_cache and cache is not None:
            latents = _cached_latents(session, comp, r.data.resolution)
        if latents is not None:
            h, w = latents[0].shape[:2]
            pixels = None
        else:
            pixels = self._pixels(session, comp)
            h, w = pixels[0].shape[1] // self.factor, pixels[0].shape[2] // self.factor
        ph, pw = self.patch
        frame_tokens = (h // ph) * (w // pw)
        tokens = layout_tokens(self.spec, comp, frame_tokens, step_lens)
        return Prepared(session, comp, pixels, latents, (h, w), step_lens, tokens)

    def _pixels(self, session, comp: Composition) -> list[Tensor]:
        from vincie_cli.model.images import aspect_crop, preprocess

        first = session.frames[comp.frames[0].index]
        H, W = first.shape[:2]
        _, _, aspect = self.frame_size(H, W)
        out = []
        for ref in comp.frames:
            if ref.kind == "image":
                x = _resize_to(_float_image(session.frames[ref.index]), (H, W), nearest=False)
            else:
                m = (session.src_masks if ref.kind == "mask_src" else session.dst_masks)[ref.index]
                x = _resize_to(_mask_image(m), (H, W), nearest=True)
            if aspect != "keep_ratio":
                x = aspect_crop(x, aspect)
            out.append(preprocess(x, self.recipe.data.resolution, name=f"session {session.key}"))
        return out


def _cached_latents(session, comp: Composition, resolution: int) -> list[Tensor] | None:
    """Latents of every stack frame from the session's cache entry, or None when one is missing."""
    cache = session.cache
    if int(cache.get("resolution", -1)) != resolution:
        raise UsageError(
            f"session {session.key}: its latent cache was made at {cache.get('resolution')} px, the recipe trains "
            f"at data.resolution={resolution}; rebuild the cache or set data.use_cache=false"
        )
    out = []
    for ref in comp.frames:
        if ref.kind == "image":
            z = cache["latents"][ref.index] if ref.index < len(cache["latents"]) else None
        else:
            z = cache["src_masks" if ref.kind == "mask_src" else "dst_masks"][ref.index]
        if z is None:
            return None
        out.append(z)
    return out


class TokenBatcher:
    """Micro-batches of `Prepared` sessions within a token budget, in stream order (see the module docstring).

    state_of: a callable returning the data source's state (e.g. `SessionDataset.state_dict`), called before
    each session is pulled, so `resume_state()` names the position of the first session not yet trained on.
    """

    def __init__(
        self,
        sessions: Iterator[Any],
        preparer: Preparer,
        budget: int,
        state_of: Callable[[], Any] | None = None,
    ) -> None:
        self.it = iter(sessions)
        self.preparer = preparer
        self.budget = budget
        self.state_of = state_of or (lambda: None)
        self._carry: tuple[Prepared, Any] | None = None
        self._warned = False
        self.exhausted = False

    def resume_state(self) -> Any:
        return self._carry[1] if self._carry is not None else self.state_of()

    def _pull(self) -> tuple[Prepared, Any] | None:
        while True:
            state = self.state_of()
            try:
                session = next(self.it)
            except StopIteration:
                self.exhausted = True
                return None
            p = self.preparer.prepare(session)
            if p is None or p.tokens == 0:
                continue
            cap = p.comp.window[1]
            while p.tokens > self.budget and cap > 1:
                cap -= 1
                p = self.preparer.prepare(session, turns_cap=cap)
            if p.tokens > self.budget and not self._warned:
                self._warned = True
                log.warning(
                    "session %s needs %d tokens with one turn, more than train.tokens_per_batch=%d; it is "
                    "trained alone (raise the budget or lower data.resolution)",
                    session.key, p.tokens, self.budget,
                )  # fmt: skip
            return p, state

    def next_batch(self) -> list[Prepared] | None:
        batch: list[Prepared] = []
        used = 0
        while True:
            if self._carry is not None:
                item, self._carry = self._carry, None
            else:
                item = self._pull()
                if item is None:
                    return batch or None
            p, state = item
            if batch and used + p.tokens > self.budget:
                self._carry = (p, state)
                return batch
            batch.append(p)
            used += p.tokens
            if used >= self.budget:
                return batch

    def __iter__(self) -> Iterator[list[Prepared]]:
        while (batch := self.next_batch()) is not None:
            yield batch
