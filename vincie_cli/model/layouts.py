"""The two conditioning layouts, for training and for inference (`make_denoiser`, used by `vincie edit`).

A session is a stack of frames 0..F-1 (images and masks, `prompts.plan_session` order) with text step s
between frame s and frame s+1 (step s produces frame s+1 and carries turn embedding s). Latents are
(h, w, C); every frame of a session has the same size. DiT input channels are [a C | b C | m 1].

Released layout (`kind="released"`, the official weights): to produce frame j, frames 0..j are stacked in
time, channels `[x_t | clean | 1]` for known context frames and `[x_t | 0 | 0]` for the target and for
unknown (hidden) frames; noise at one timestep t on *every* frame, as the release samples; texts of steps
0..j-1; default positions (text j -> (j, j, j), frame f -> (L + f, r, c)); full attention. Training puts the
loss on the target frame (weight 1 x its task weight) and, with `context_loss_weight` > 0, on the other
frames too (the sampler integrates them at inference).

Paper layout (`kind="paper"`): clean frames are tokens `[z | z | 1]` at frame timestep 0, a target is
`[x_t | 0 | 0]` at its own timestep t (per-frame timesteps); text tokens use timestep 0. With
`condition="source"` a target is `[x_t | z_src | 0]`: it also carries the latent of the image it is edited
from (the latest visible image frame before it), a local path for the large unchanged part of an edit that
small models trained from scratch otherwise learn only slowly through attention. Attention:
- "full": each target j is its own packed sample [clean frames < j; noisy j; steps < j] with full
  attention (what inference with full attention computes);
- "block_causal": one sample per session holds every clean frame, every noisy target and every step, with
  the mask (q may attend k):
      clean i -> clean <= i, step < i        step s -> clean <= s, step <= s
      noisy j -> clean < j, step < j, itself  (nothing attends to a noisy target but itself)
  so every target sees exactly what it sees at inference, and one forward trains every turn.
RoPE: "interleaved" walks the session in order (frame f at one temporal index, then one index per token
of step f), so a prefix has the same positions whatever follows; "text_then_image" is the release's
(L + f with L the sample's text length; with block_causal, L counts every step of the session, which
inference cannot know: prefer interleaved there).
Hidden frames (composition) keep their position slot; the released layout marks them unknown, the paper
layout leaves out their clean tokens.

Inference API (stable; used by `vincie_cli.edit`):

    den = make_denoiser(model.dit, layout, context, steps_pos, steps_neg)
    x = flow.sampler.euler_sample(noise_of_shape(den.state_shape), den, timesteps, cfg_scale=..., batched=True)
    latent = den.target(x)                     # (h, w, C): decode with model.vae.decode(latent[None])

`context`: clean latents (h, w, C) of frames 0..j-1 (None = unknown frame); `steps_pos` / `steps_neg`:
per-step text states (n_s, D) from `model.encode_prompts` (len(steps_pos) == j; the negative may have any
number of steps >= 1: our models are trained with empty texts, the release used one negative prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from vincie_cli.flow.loss import changed_positions, changed_row_weights
from vincie_cli.flow.schedule import T_MAX, add_noise
from vincie_cli.model.dit import assemble_session_text
from vincie_cli.utils.io import BadInputError

LAYOUT_KINDS = ("released", "paper")
ATTENTION_KINDS = ("block_causal", "full")
ROPE_KINDS = ("interleaved", "text_then_image")
GROUPS = ("nip", "csp", "nsp", "context")
GROUP_ID = {g: i for i, g in enumerate(GROUPS)}

CONDITION_KINDS = ("none", "source")
PREDICTION_KINDS = ("velocity", "x0", "x0_source")
X0_T_MIN = 0.05  # x0 predictions: v = (x_t - x0_hat) / max(t/T, X0_T_MIN), so low t stays bounded
SOURCE_SIGMA = 0.1  # prediction "x0_source": default prior std of (clean target - source latent), latent units

# token roles in attention masks
CLEAN, TEXT, NOISY = 0, 1, 2


@dataclass(frozen=True)
class LayoutSpec:
    """Which conditioning layout a model uses (stored in its model_config.json as "layout")."""

    kind: str = "released"
    attention: str = "full"  # paper layout: "full" | "block_causal"
    rope: str = "text_then_image"  # paper layout: "text_then_image" | "interleaved"
    # paper layout: what the noisy target carries in its clean-context channels: "none" (zeros, as the
    # release's target frame) or "source" (the latent of the image being edited: a local copy path)
    condition: str = "none"
    # paper layout: what the network outputs: "velocity" (eps - x0, as the release), "x0" (the clean latent)
    # or "x0_source" (a correction to the best linear guess of the clean latent from x_t and the source
    # image; `output_velocity`). Pixel-space models with big tokens learn far faster with the x0 kinds.
    prediction: str = "velocity"
    # prediction "x0_source": the prior std of (clean target - source latent). The network's output is scaled
    # by it, so an edit that moves a latent value by d needs an output of about d / source_sigma
    source_sigma: float = SOURCE_SIGMA

    def __post_init__(self) -> None:
        if self.kind not in LAYOUT_KINDS:
            raise BadInputError(f"layout kind must be one of {LAYOUT_KINDS}, got {self.kind!r}")
        if self.attention not in ATTENTION_KINDS:
            raise BadInputError(f"layout attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.rope not in ROPE_KINDS:
            raise BadInputError(f"layout rope must be one of {ROPE_KINDS}, got {self.rope!r}")
        if self.condition not in CONDITION_KINDS:
            raise BadInputError(f"layout condition must be one of {CONDITION_KINDS}, got {self.condition!r}")
        if self.prediction not in PREDICTION_KINDS:
            raise BadInputError(f"layout prediction must be one of {PREDICTION_KINDS}, got {self.prediction!r}")
        if self.kind == "released" and (self.condition, self.prediction) != ("none", "velocity"):
            raise BadInputError("the released layout has no condition or prediction options (paper layout only)")
        if self.prediction == "x0_source" and self.condition != "source":
            raise BadInputError('layout prediction "x0_source" needs condition "source" (its guess starts from it)')
        if not self.source_sigma > 0:
            raise BadInputError(f"layout source_sigma must be > 0, got {self.source_sigma!r}")

    @classmethod
    def of(cls, obj: Any) -> LayoutSpec:
        """From a LayoutSpec, a mapping, an object with kind/attention/rope, a model config with `.layout`,
        or None (the released layout)."""
        if obj is None:
            return cls()
        if isinstance(obj, LayoutSpec):
            return obj
        if hasattr(obj, "layout") and not hasattr(obj, "kind"):
            return cls.of(obj.layout)
        if isinstance(obj, dict):
            keys = ("kind", "attention", "rope", "condition", "prediction", "source_sigma")
            return cls(**{k: obj[k] for k in keys if k in obj})
        return cls(
            obj.kind,
            obj.attention,
            obj.rope,
            getattr(obj, "condition", "none"),
            getattr(obj, "prediction", "velocity"),
            getattr(obj, "source_sigma", SOURCE_SIGMA),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "attention": self.attention, "rope": self.rope}
        if self.condition != "none":
            d["condition"] = self.condition
        if self.prediction != "velocity":
            d["prediction"] = self.prediction
        if self.prediction == "x0_source" and self.source_sigma != SOURCE_SIGMA:
            d["source_sigma"] = self.source_sigma
        return d


def x0_from_source(
    x_t: Tensor, src: Tensor, out: Tensor, t: Tensor, T: float = T_MAX, sigma: float = SOURCE_SIGMA
) -> Tensor:
    """prediction "x0_source": x0_hat = m + c * out, where m and c are the mean and std of x0 given x_t under
    the prior x0 ~ N(src, sigma^2): the network only predicts a normalised correction, and an output of zero
    is already the right answer for everything the edit leaves alone.

    x_t, src, out: (N, C); t: (N,) in [0, T]. At t = 0 this is x_t, at t = T it is src + sigma * out.
    """
    s = (t.float() / T).to(x_t.dtype)[:, None]
    a, var_prior = 1 - s, sigma**2
    var = a * a * var_prior + s * s
    mean = src + (a * var_prior / var) * (x_t - a * src)
    return mean + (s * sigma / var.sqrt()) * out


def output_velocity(prediction: str, vid: Tensor, out: Tensor, t: Tensor, sigma: float = SOURCE_SIGMA) -> Tensor:
    """The velocity from DiT outputs `out` (N, C) of the rows `vid` (N, 2C+1) = [x_t | source | flag] at t (N,);
    `sigma` is the layout's source_sigma (prediction "x0_source")."""
    if prediction == "velocity":
        return out
    c = out.shape[1]
    x_t = vid[:, :c].to(out.dtype)
    x0 = out if prediction == "x0" else x0_from_source(x_t, vid[:, c : 2 * c].to(out.dtype), out, t, sigma=sigma)
    return velocity_from_x0(x_t, x0, t)


def velocity_from_x0(x_t: Tensor, x0: Tensor, t: Tensor, T: float = T_MAX) -> Tensor:
    """The velocity eps - x0 implied by a clean-latent prediction: (x_t - x0) / max(t/T, X0_T_MIN).

    x_t, x0: (N, C); t: (N,) or (1,) timesteps in [0, T]. Exact for t/T >= X0_T_MIN (x_t = (1-s) x0 + s eps).
    """
    s = (t.float() / T).clamp(min=X0_T_MIN).to(x_t.dtype)
    return (x_t - x0) / s[:, None]


# --------------------------------------------------------------------------------------------
# one DiT sample


@dataclass
class DitSample:
    """One sample of a packed DiT call: its video rows (latent units), text steps, times, positions, mask."""

    vid: Tensor  # (T*h*w, 2C+1)
    shape: tuple[int, int, int]  # (T, h, w) latent units
    steps: list[int]  # session step indices, in text order
    timestep: float  # the sample's (text) timestep
    frame_t: Tensor | None  # (T,) per-frame timesteps (paper layout)
    vid_pos: Tensor | None  # (T*h'*w', 3) patched units
    txt_pos: Tensor | None  # (L, 3)
    roles: tuple[Tensor, Tensor] | None  # (role, index) per token over [patched video; text]; None = full
    vid_tokens: int = 0  # patched video tokens
    text_tokens: int = 0
    patch: tuple[int, int] = (2, 2)
    # loss: (stack slot, group id, weight, x0 of that frame (h*w, C), eps (h*w, C), positions the edit
    # changed (h*w,) bool or None: not an image target, or not asked)
    loss: list[tuple[int, int, float, Tensor, Tensor, Tensor | None]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return self.vid_tokens + self.text_tokens


def _grid(frame_pos: Tensor, h: int, w: int) -> Tensor:
    """(T,) temporal positions -> (T*h*w, 3) float positions (t, r, c), row-major."""
    t = frame_pos.float()[:, None, None].expand(-1, h, w)
    r = torch.arange(h, dtype=torch.float32)[None, :, None].expand(t.shape)
    c = torch.arange(w, dtype=torch.float32)[None, None, :].expand(t.shape)
    return torch.stack([t, r, c], dim=-1).reshape(-1, 3)


def step_positions(step_lens: Sequence[int], num_frames: int, rope: str) -> tuple[list[float], list[Tensor]]:
    """Temporal position of frames 0..num_frames-1 and the (L_s,) positions of each step's tokens.

    interleaved: frame 0, step 0, frame 1, step 1, ... with one index per frame and per text token.
    text_then_image: steps concatenated from 0; frames at L + f (L = sum of the given step lengths).
    """
    frame_pos: list[float] = []
    text_pos: list[Tensor] = []
    if rope == "interleaved":
        p = 0
        for f in range(num_frames):
            frame_pos.append(float(p))
            p += 1
            if f < len(step_lens):
                text_pos.append(torch.arange(p, p + step_lens[f], dtype=torch.float32))
                p += step_lens[f]
        for s in range(num_frames, len(step_lens)):  # steps past the last frame (negative prompts)
            text_pos.append(torch.arange(p, p + step_lens[s], dtype=torch.float32))
            p += step_lens[s]
    else:
        p = 0
        for n in step_lens:
            text_pos.append(torch.arange(p, p + n, dtype=torch.float32))
            p += n
        frame_pos = [float(p + f) for f in range(num_frames)]
    return frame_pos, text_pos


def attention_rule(qr: Tensor, qi: Tensor, kr: Tensor, ki: Tensor) -> Tensor:
    """The block-causal rule on token (role, index) pairs, broadcasting; True = q may attend k."""
    ck, tk, nk = kr == CLEAN, kr == TEXT, kr == NOISY
    from_clean = (qr == CLEAN) & ((ck & (ki <= qi)) | (tk & (ki < qi)))
    from_text = (qr == TEXT) & ((ck | tk) & (ki <= qi))
    from_noisy = (qr == NOISY) & (((ck | tk) & (ki < qi)) | (nk & (ki == qi)))
    return from_clean | from_text | from_noisy


def dense_mask(roles: Tensor, index: Tensor) -> Tensor:
    """(N,) roles and indices -> (N, N) bool mask of `attention_rule`."""
    return attention_rule(roles[:, None], index[:, None], roles[None, :], index[None, :])


def attended_pairs(roles: Tensor, index: Tensor) -> int:
    """Query-key pairs `attention_rule` allows, counted over runs of equal (role, index) (no N x N tensor)."""
    change = torch.ones(roles.shape[0], dtype=torch.bool)
    change[1:] = (roles[1:] != roles[:-1]) | (index[1:] != index[:-1])
    starts = change.nonzero().flatten()
    sizes = torch.diff(torch.cat([starts, torch.tensor([roles.shape[0]])]))
    r, i = roles[starts], index[starts]
    allowed = attention_rule(r[:, None], i[:, None], r[None, :], i[None, :])
    return int((sizes[:, None] * sizes[None, :] * allowed).sum())


def flex_mask(roles: Sequence[tuple[Tensor, Tensor] | None], seqlens: Sequence[int], device, block: int = 128):
    """One FlexAttention BlockMask over a packed batch: samples apart, block-causal samples by the rule,
    the others (roles None) full. Padded to a multiple of `block` (padding attends only to itself)."""
    from torch.nn.attention.flex_attention import create_block_mask

    from vincie_cli.model.layers import FlexMask

    n = sum(seqlens)
    length = -(-n // block) * block
    sample = torch.full((length,), len(seqlens), dtype=torch.long)
    role = torch.full((length,), -1, dtype=torch.long)
    index = torch.zeros(length, dtype=torch.long)
    attended, start = 0, 0
    for i, (r, n_i) in enumerate(zip(roles, seqlens)):
        sample[start : start + n_i] = i
        if r is not None:
            role[start : start + n_i] = r[0]
            index[start : start + n_i] = r[1]
            attended += attended_pairs(*r)
        else:
            attended += n_i * n_i
        start += n_i
    sample, role, index = sample.to(device), role.to(device), index.to(device)

    def mask_mod(b, h, q, kv):
        rule = attention_rule(role[q], index[q], role[kv], index[kv])
        return (sample[q] == sample[kv]) & ((role[q] < 0) | rule)

    bm = create_block_mask(mask_mod, None, None, length, length, device=str(device), BLOCK_SIZE=block)
    return FlexMask(bm, len(seqlens), attended)


def _paper_sample(
    clean: Sequence[tuple[int, Tensor]],
    noisy: Sequence[tuple[int, Tensor, float, Tensor | None]],
    steps: list[int],
    step_lens: Sequence[int],
    num_slots: int,
    spec: LayoutSpec,
    patch: tuple[int, int],
    causal: bool,
) -> DitSample:
    """Stack clean frames [z|z|1] (t=0) then noisy targets [x_t|0|0] (their t), with positions and roles.

    clean: (frame index, z (h, w, C)); noisy: (frame index, x_t (h, w, C), t, source latent or None: what the
    target carries in its clean channels). num_slots: frames that own a position slot (the session's frame
    count, or j + 1 for a prefix up to target j).
    """
    ref = clean[0][1] if clean else noisy[0][1]
    h, w, c = ref.shape
    ph, pw = patch
    rows, frame_t, tpos, roles, index = [], [], [], [], []
    frame_pos, text_pos = step_positions([step_lens[s] for s in steps], num_slots, spec.rope)
    for f, z in clean:
        z = z.float()
        rows.append(torch.cat([z, z, torch.ones(h, w, 1)], dim=-1).reshape(-1, 2 * c + 1))
        frame_t.append(0.0)
        tpos.append(frame_pos[f])
        roles.append(CLEAN)
        index.append(f)
    for f, x, t, src in noisy:
        cond = torch.zeros(h, w, c) if src is None else src.float()
        rows.append(torch.cat([x.float(), cond, torch.zeros(h, w, 1)], dim=-1).reshape(-1, 2 * c + 1))
        frame_t.append(float(t))
        tpos.append(frame_pos[f])
        roles.append(NOISY)
        index.append(f)
    hp, wp = h // ph, w // pw
    n_frames = len(rows)
    vid_pos = _grid(torch.tensor(tpos), hp, wp)
    txt_pos = torch.cat(text_pos)[:, None].expand(-1, 3).contiguous() if text_pos else torch.zeros(0, 3)
    tok_roles = tok_index = None
    if causal:
        per = hp * wp
        tok_roles = torch.cat([torch.tensor(roles).repeat_interleave(per), torch.full((txt_pos.shape[0],), TEXT)])
        tok_index = torch.cat(
            [torch.tensor(index).repeat_interleave(per)] + [torch.full((step_lens[s],), s) for s in steps]
        )
    sample = DitSample(
        vid=torch.cat(rows),
        shape=(n_frames, h, w),
        steps=list(steps),
        timestep=0.0,
        frame_t=torch.tensor(frame_t),
        vid_pos=vid_pos,
        txt_pos=txt_pos,
        roles=(tok_roles, tok_index) if causal else None,
    )
    sample.vid_tokens = n_frames * hp * wp
    sample.text_tokens = int(txt_pos.shape[0])
    sample.patch = patch
    return sample


def _released_sample(
    frames: Sequence[Tensor | None], x_t: Tensor, steps: list[int], step_lens: Sequence[int], t: float, patch
) -> DitSample:
    """Frames 0..j (the last one the target), x_t (j+1, h, w, C): [x_t | z | 1] / [x_t | 0 | 0]."""
    T, h, w, c = x_t.shape
    cond = torch.zeros(T, h, w, c + 1)
    for f, z in enumerate(frames[:-1]):
        if z is not None:
            cond[f, ..., :c] = z.float()
            cond[f, ..., c] = 1.0
    vid = torch.cat([x_t.float(), cond], dim=-1).reshape(-1, 2 * c + 1)
    sample = DitSample(vid, (T, h, w), list(steps), float(t), None, None, None, None)
    ph, pw = patch
    sample.vid_tokens = T * (h // ph) * (w // pw)
    sample.text_tokens = sum(step_lens[s] for s in steps)
    sample.patch = (ph, pw)
    return sample


# --------------------------------------------------------------------------------------------
# training


def image_frames(tasks: Sequence[str], num_frames: int) -> list[bool]:
    """Per frame of a stack, whether it is an image (the first frame, and every frame an image step makes;
    frame j's task is tasks[j-1]) rather than a mask."""
    return [f == 0 or tasks[f - 1] in ("nip", "label") for f in range(num_frames)]


def source_frame(j: int, is_image: Sequence[bool], hidden: Sequence[bool]) -> int | None:
    """The image target j is edited from (condition "source"): the latest visible image frame before j."""
    for f in range(j - 1, -1, -1):
        if is_image[f] and not hidden[f]:
            return f
    return None


@dataclass(frozen=True)
class ContextDegrade:
    """Train on context images the way inference makes them: every image after a session's first is, at
    inference, the model's own output and drifts (colours fade, noise builds up) turn after turn. With
    probability `prob` each such frame is shown to later targets as z + a (mean(z) - z) + n eps, a ~ U(0, fade),
    n ~ U(0, noise) (mean over positions, per channel): the context copy and the source channels see it, the
    loss still targets the clean latent. The first image stays clean, so a model that can read its context
    learns to restore what an edit keeps from it.

    Fading loses little: a model can undo it from the frame alone. `erase` (a share of each side, 0 = off)
    also blanks one rectangle of the degraded frame to its mean, sides drawn in [1, erase * side] positions,
    anywhere: what was there is only in the earlier frames, so only a model that reads them can restore it.
    `erase_at` "kept" centres the rectangle on the frame's content that the session's first image holds at
    the same place (`kept_content`), so the blank always hides something the context can give back; "anywhere"
    (the default) places it uniformly, mostly over background a model can fill from the frame alone."""

    prob: float = 0.0
    noise: float = 0.1
    fade: float = 0.3
    erase: float = 0.0
    erase_at: str = "anywhere"

    def apply(self, z: Tensor, generator: torch.Generator, where: Tensor | None = None) -> Tensor:
        """z: (h, w, C) clean latent -> the degraded (h, w, C), or z itself (probability 1 - prob).

        where: (h, w) non-negative weights to draw the erased rectangle's centre from (`kept_content`); None
        or all zero: the rectangle goes anywhere."""
        if self.prob <= 0 or float(torch.rand((), generator=generator)) >= self.prob:
            return z
        a, n = (torch.rand(2, generator=generator) * torch.tensor([self.fade, self.noise])).tolist()
        eps = torch.randn(z.shape, generator=generator)
        zf = z.float()
        mean = zf.mean(dim=(0, 1), keepdim=True)
        out = zf + a * (mean - zf)
        if self.erase > 0:
            h, w = z.shape[:2]
            bh, bw = (max(1, round(self.erase * side)) for side in (h, w))
            eh, ew = (int(torch.randint(1, b + 1, (), generator=generator)) for b in (bh, bw))
            if where is not None and float(where.sum()) > 0:
                centre = int(torch.multinomial(where.reshape(-1).float(), 1, generator=generator))
                cy, cx = divmod(centre, w)
                y0, x0 = min(max(cy - eh // 2, 0), h - eh), min(max(cx - ew // 2, 0), w - ew)
            else:
                y0 = int(torch.randint(0, h - eh + 1, (), generator=generator))
                x0 = int(torch.randint(0, w - ew + 1, (), generator=generator))
            out[y0 : y0 + eh, x0 : x0 + ew] = mean[0, 0]
        return (out + n * eps).to(z.dtype)


def kept_content(z: Tensor, first: Tensor, threshold: float) -> Tensor:
    """(h, w) weights where frame z (h, w, C) has content (mean squared distance over channels from its
    background, the per-channel median over positions, above `threshold`) that the session's first image
    `first` (h, w, C) holds at the same place (within `threshold`): the distance itself there, 0 elsewhere.
    All zero when nothing qualifies."""
    zf = z.float()
    background = zf.reshape(-1, zf.shape[-1]).median(dim=0).values  # the mean would count objects in
    content = (zf - background).pow(2).mean(-1)
    kept = (zf - first.float()).pow(2).mean(-1) <= threshold
    return torch.where((content > threshold) & kept, content, torch.zeros_like(content))


def training_samples(
    spec: LayoutSpec,
    latents: Sequence[Tensor],
    hidden: Sequence[bool],
    targets: Sequence[int],
    tasks: Sequence[str],
    step_lens: Sequence[int],
    times: dict[int, float],
    generator: torch.Generator,
    patch: tuple[int, int],
    task_weights: dict[str, float],
    context_weight: float = 0.0,
    changed_threshold: float | None = None,
    degrade: ContextDegrade | None = None,
    degrade_generator: torch.Generator | None = None,
    seen_frames: dict[int, Tensor] | None = None,
    changed_against_seen: bool = False,
) -> list[DitSample]:
    """The DiT samples that train one composed session under `spec`.

    latents: clean (h, w, C) of every frame of the stack; hidden: per frame; targets: frames with loss;
    tasks: per step ("nip"/"csp"/"nsp"; frame j's task is tasks[j-1]); step_lens: text tokens per step
    (turn embedding included); times: timestep per target in [0, 1000]. Noise comes from `generator`.
    changed_threshold: mark the positions each image target changed (`flow.loss.changed_positions`, against
    the latest visible image before it, whatever `spec.condition`; all of them when there is none); None: no
    marks. changed_against_seen: compare with that image as the target sees it (after `seen_frames` and
    `degrade`) instead of its clean latent, so what a degraded source lost is marked too. seen_frames:
    {frame: (h, w, C)} what later targets see of those frames instead of their clean latents (context copy
    and source channels; `tasks.self_context` gives the model's own outputs); the losses still target
    `latents`. degrade: how later targets see the image frames after the first
    (`ContextDegrade`, applied after `seen_frames`, its draws from `degrade_generator`, default
    `generator`; with `erase_at` "kept" the rectangles go where `kept_content` of the clean frame against the
    first, at `changed_threshold` or 0.01, points); None: clean.
    """
    F_ = len(latents)
    h, w, c = latents[0].shape
    out: list[DitSample] = []
    is_image = image_frames(tasks, F_)
    seen = list(latents)  # what targets see of each frame; losses target `latents`
    for f, z in (seen_frames or {}).items():
        if z.shape != latents[f].shape:
            raise BadInputError(f"seen_frames[{f}]: shape {tuple(z.shape)}, expected {tuple(latents[f].shape)}")
        seen[f] = z
    if degrade is not None and degrade.prob > 0:
        dg = degrade_generator or generator
        thr = 0.01 if changed_threshold is None else changed_threshold

        def where(f: int) -> Tensor | None:  # computed on the clean frames: what the session really keeps
            return kept_content(latents[f], latents[0], thr) if degrade.erase_at == "kept" else None

        seen = [degrade.apply(z, dg, where(f)) if is_image[f] and f > 0 else z for f, z in enumerate(seen)]
    known = [None if hidden[f] else seen[f] for f in range(F_)]

    def source(j: int) -> Tensor | None:
        if spec.condition != "source":
            return None
        f = source_frame(j, is_image, hidden)
        return None if f is None else seen[f]

    def noise() -> Tensor:
        return torch.randn(h, w, c, generator=generator)

    def changed_rows(j: int) -> Tensor | None:  # the positions target j changed (all: no image to edit)
        if changed_threshold is None or not is_image[j]:
            return None
        f = source_frame(j, is_image, hidden)
        if f is None:
            return torch.ones(h * w, dtype=torch.bool)
        return changed_positions(latents[j], seen[f] if changed_against_seen else latents[f], changed_threshold)

    if spec.kind == "released":
        for j in targets:
            t = times[j]
            eps = torch.randn(j + 1, h, w, c, generator=generator)
            x0 = torch.stack([latents[f].float() for f in range(j + 1)])
            x_t = add_noise(x0, eps, torch.tensor(t))
            s = _released_sample(known[: j + 1], x_t, list(range(j)), step_lens, t, patch)
            g = GROUP_ID[tasks[j - 1]]
            wj = task_weights.get(tasks[j - 1], 1.0)
            s.loss.append((j, g, wj, x0[j].reshape(-1, c), eps[j].reshape(-1, c), changed_rows(j)))
            if context_weight > 0:
                for f in range(j):
                    x0f, epsf = x0[f].reshape(-1, c), eps[f].reshape(-1, c)
                    s.loss.append((f, GROUP_ID["context"], context_weight, x0f, epsf, None))
            out.append(s)
        return out

    causal = spec.attention == "block_causal"
    if causal:
        last = max(targets)
        clean = [(f, seen[f]) for f in range(last) if not hidden[f]]
        noisy, loss = [], []
        for j in targets:
            eps = noise()
            x0 = latents[j].float()
            noisy.append((j, add_noise(x0, eps, torch.tensor(times[j])), times[j], source(j)))
            loss.append((j, x0, eps))
        s = _paper_sample(clean, noisy, list(range(last)), step_lens, last + 1, spec, patch, causal=True)
        for k, (j, x0, eps) in enumerate(loss):
            slot = len(clean) + k
            s.loss.append(
                (
                    slot,
                    GROUP_ID[tasks[j - 1]],
                    task_weights.get(tasks[j - 1], 1.0),
                    x0.reshape(-1, c),
                    eps.reshape(-1, c),
                    changed_rows(j),
                )
            )
        return [s]
    for j in targets:
        eps = noise()
        x0 = latents[j].float()
        clean = [(f, seen[f]) for f in range(j) if not hidden[f]]
        x_t = add_noise(x0, eps, torch.tensor(times[j]))
        s = _paper_sample(
            clean, [(j, x_t, times[j], source(j))], list(range(j)), step_lens, j + 1, spec, patch, causal=False
        )
        s.loss.append(
            (
                len(clean),
                GROUP_ID[tasks[j - 1]],
                task_weights.get(tasks[j - 1], 1.0),
                x0.reshape(-1, c),
                eps.reshape(-1, c),
                changed_rows(j),
            )
        )
        out.append(s)
    return out


@dataclass
class PackedInput:
    """A packed DiT call (every tensor on `device`) plus the rows that carry loss."""

    vid: Tensor
    vid_shape: Tensor
    txt_states: list[list[Tensor]]  # per sample, per step (n_s, D) states (turn embeddings added in `text`)
    timestep: Tensor
    frame_timestep: Tensor | None
    vid_pos: Tensor | None
    txt_pos: Tensor | None
    attn_mask: Any  # list of dense (N_i, N_i) masks, a layers.FlexMask, or None
    loss_rows: Tensor  # (R,) long rows of the DiT output
    target: Tensor  # (R, C) velocity targets eps - x0
    groups: Tensor  # (R,) long group ids (GROUPS)
    weights: Tensor  # (num groups,) weight per group present in this batch
    row_changed: Tensor | None  # (R,) bool: image rows their edit changed (None: not marked)
    row_weights: Tensor | None  # (R,) per-row loss weights (flow.changed_share), None = all 1
    vid_lens: list[int]  # patched video tokens per sample (for FLOPs)
    txt_lens: list[int]
    attended_pairs: int  # query-key pairs actually attended (for FLOPs)
    prediction: str = "velocity"  # what the DiT outputs (LayoutSpec.prediction); run_dit returns velocities
    source_sigma: float = SOURCE_SIGMA  # LayoutSpec.source_sigma (prediction "x0_source")

    def text(self, table: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Assemble the samples' texts with the turn-embedding table (keeps the table's gradient)."""
        txt, shape = assemble_session_text(self.txt_states, table)
        return txt.to(dtype), shape

    def row_timesteps(self) -> Tensor:
        """(N,) the timestep of every video row (each frame's t over its h*w rows)."""
        shape = self.vid_shape
        if self.frame_timestep is None:
            return torch.repeat_interleave(self.timestep, shape[:, 0] * shape[:, 1] * shape[:, 2])
        return torch.repeat_interleave(
            self.frame_timestep, torch.repeat_interleave(shape[:, 1] * shape[:, 2], shape[:, 0])
        )

    @property
    def num_tokens(self) -> int:
        return sum(self.vid_lens) + sum(self.txt_lens)


def pack_samples(
    samples: Sequence[DitSample],
    step_states: Sequence[Sequence[Tensor]],
    owners: Sequence[int],
    spec: LayoutSpec,
    device: torch.device | str,
    mask_backend: str = "dense",
    group_weights: dict[int, float] | None = None,
    with_loss: bool = True,
    changed_share: float = 0.0,
) -> PackedInput:
    """Concatenate samples into one packed DiT call.

    step_states[o]: the text states of session o's steps; owners[i]: the session of sample i.
    mask_backend: "dense" (per-sample bool masks, any device), "flex" (one FlexAttention BlockMask over the
    pack: block-causal samples by the rule, the others full), or "none" (no masks; only valid without
    block-causal samples). changed_share: weight the rows of targets with changed positions
    (`flow.loss.changed_row_weights`); 0: every row weighs the same.
    """
    dev = torch.device(device)
    vid = torch.cat([s.vid for s in samples]).to(dev)
    vid_shape = torch.tensor([list(s.shape) for s in samples], dtype=torch.long, device=dev)
    txt_states = [[step_states[o][k] for k in s.steps] for s, o in zip(samples, owners)]
    paper = spec.kind == "paper"
    timestep = torch.tensor([s.timestep for s in samples], dtype=torch.float32, device=dev)
    frame_t = torch.cat([s.frame_t for s in samples]).to(dev) if paper else None
    vid_pos = torch.cat([s.vid_pos for s in samples]).to(dev) if paper else None
    txt_pos = torch.cat([s.txt_pos for s in samples]).to(dev) if paper else None
    vid_lens = [s.vid_tokens for s in samples]
    txt_lens = [s.text_tokens for s in samples]
    for s, o, n in zip(samples, owners, txt_lens):
        got = sum(int(step_states[o][k].shape[0]) + 1 for k in s.steps)
        if got != n:
            raise BadInputError(f"text length mismatch: sample expects {n} tokens, states give {got}")

    causal = [s.roles is not None for s in samples]
    attended = 0
    attn_mask: Any = None
    if any(causal):
        if mask_backend == "none":
            raise BadInputError("block-causal samples need an attention mask backend")
        if mask_backend == "flex":
            attn_mask = flex_mask([s.roles for s in samples], [a + b for a, b in zip(vid_lens, txt_lens)], dev)
            attended = attn_mask.attended_pairs
        else:
            attn_mask = []
            for s, a, b in zip(samples, vid_lens, txt_lens):
                if s.roles is None:
                    m = torch.ones(a + b, a + b, dtype=torch.bool)
                else:
                    m = dense_mask(*s.roles)
                attended += int(m.sum())
                attn_mask.append(m.to(dev))
    else:
        attended = sum((a + b) ** 2 for a, b in zip(vid_lens, txt_lens))
        if mask_backend == "flex" and len(samples) > 1 and dev.type == "cuda":
            attn_mask = flex_mask([None] * len(samples), [a + b for a, b in zip(vid_lens, txt_lens)], dev)

    rows, targets, groups, marks = [], [], [], []
    present: dict[int, float] = {}
    offset = 0
    for s in samples:
        T, h, w = s.shape
        per = h * w
        for slot, g, wgt, x0, eps, changed in s.loss:
            rows.append(torch.arange(offset + slot * per, offset + (slot + 1) * per))
            targets.append((eps - x0).float())
            groups.append(torch.full((per,), g, dtype=torch.long))
            marks.append(changed)
            present[g] = wgt
        offset += T * per
    row_changed = row_weights = None
    if with_loss and any(m is not None for m in marks):
        filled = [torch.zeros(len(r), dtype=torch.bool) if m is None else m for r, m in zip(rows, marks)]
        row_changed = torch.cat(filled).to(dev)
        if changed_share > 0:
            ws = [None if m is None else changed_row_weights(m, changed_share) for m in marks]
            row_weights = torch.cat([torch.ones(len(r)) if w is None else w for r, w in zip(rows, ws)]).to(dev)
    weights = torch.zeros(len(GROUPS))
    for g, wgt in present.items():
        weights[g] = wgt if group_weights is None else group_weights.get(g, wgt)
    if not with_loss or not rows:
        rows, targets, groups = (
            [torch.zeros(0, dtype=torch.long)],
            [torch.zeros(0, 1)],
            [torch.zeros(0, dtype=torch.long)],
        )
    return PackedInput(
        vid=vid,
        vid_shape=vid_shape,
        txt_states=txt_states,
        timestep=timestep,
        frame_timestep=frame_t,
        vid_pos=vid_pos,
        txt_pos=txt_pos,
        attn_mask=attn_mask,
        loss_rows=torch.cat(rows).to(dev),
        target=torch.cat(targets).to(dev),
        groups=torch.cat(groups).to(dev),
        weights=weights.to(dev),
        row_changed=row_changed,
        row_weights=row_weights,
        vid_lens=vid_lens,
        txt_lens=txt_lens,
        attended_pairs=attended,
        prediction=spec.prediction,
        source_sigma=spec.source_sigma,
    )


def run_dit(dit, packed: PackedInput) -> Tensor:
    """The DiT's velocity for every video row of a packed input (latent units, (N, C_out))."""
    table = dit.prompt_id_embedding.embedding.weight
    txt, txt_shape = packed.text(table, table.dtype)
    out = dit(
        packed.vid,
        txt,
        packed.vid_shape,
        txt_shape.to(packed.vid.device),
        packed.timestep,
        frame_timestep=packed.frame_timestep,
        vid_pos=packed.vid_pos,
        txt_pos=packed.txt_pos,
        attn_mask=packed.attn_mask,
    )
    if packed.prediction != "velocity":
        out = output_velocity(packed.prediction, packed.vid, out, packed.row_timesteps(), packed.source_sigma)
    return out


# --------------------------------------------------------------------------------------------
# inference


class SessionDenoiser:
    """Guided-denoising callable for `flow.sampler.euler_sample` that produces frame j of a session.

    state_shape: the packed state the sampler integrates ((j+1)*h*w, C) for the released layout (every
    frame is noised, as the release does), (h*w, C) for the paper layout (only the target).
    `__call__(x_t, t, branches)` returns one velocity per branch ("pos", "neg"); asking for both runs one
    packed forward with two samples. `target(x)` returns the generated frame's latent (h, w, C).
    The packed inputs (clean context, texts with turn embeddings, positions, masks) are built once per
    branch set on the DiT's device; each call only writes x_t and t into them.
    """

    def __init__(
        self,
        dit,
        layout: LayoutSpec | Any,
        context: Sequence[Tensor | None],
        steps_pos: Sequence[Tensor],
        steps_neg: Sequence[Tensor] | None = None,
        latent_hw: tuple[int, int] | None = None,
        mask_backend: str = "auto",
        source: int | None = None,
    ) -> None:
        self.dit = dit
        self.spec = LayoutSpec.of(layout)
        self.context = [None if z is None else z.detach().float().cpu() for z in context]
        j = len(self.context)
        if j < 1:
            raise BadInputError("a session needs at least one context frame (the input image)")
        if len(steps_pos) != j:
            raise BadInputError(f"{j} context frames need {j} text steps, got {len(steps_pos)}")
        if steps_neg is not None and len(steps_neg) < 1:
            raise BadInputError("the negative text needs at least one step")
        c_model = dit.config.vid_out_channels
        known = [z for z in self.context if z is not None]
        if known:
            h, w, c = known[0].shape
            for z in known:
                if tuple(z.shape) != (h, w, c):
                    raise BadInputError(f"context latents differ in shape: {tuple(z.shape)} vs {(h, w, c)}")
        elif latent_hw is not None:
            (h, w), c = latent_hw, c_model
        else:
            raise BadInputError("no known context frame: give latent_hw")
        if c != c_model:
            raise BadInputError(f"latents have {c} channels, the model {c_model}")
        _, ph, pw = dit.config.patch_size
        if h % ph or w % pw:
            raise BadInputError(f"latent size {h}x{w} is not a multiple of the {ph}x{pw} patch")
        self.j, self.h, self.w, self.c = j, h, w, c
        if source is None:  # without frame roles: the latest known frame (right when no mask frame precedes)
            source = max((f for f, z in enumerate(self.context) if z is not None), default=None)
        elif not (0 <= source < j and self.context[source] is not None):
            raise BadInputError(f"source frame {source} is not a known context frame")
        self.source = source
        self.patch = (ph, pw)
        self.device = dit.device
        if mask_backend == "auto":
            mask_backend = "flex" if self.device.type == "cuda" else "dense"
        self.mask_backend = mask_backend
        self.texts = {"pos": [s.detach() for s in steps_pos]}
        if steps_neg is not None:
            self.texts["neg"] = [s.detach() for s in steps_neg]
        self._prepared: dict[tuple[str, ...], tuple[PackedInput, Tensor, Tensor, Tensor]] = {}
        self.calls = 0

    @property
    def state_shape(self) -> tuple[int, int]:
        frames = self.j + 1 if self.spec.kind == "released" else 1
        return (frames * self.h * self.w, self.c)

    def target(self, x: Tensor) -> Tensor:
        """The generated frame (h, w, C) from a final sampler state."""
        return x[-self.h * self.w :].reshape(self.h, self.w, self.c)

    def _sample(self, steps: Sequence[Tensor]) -> DitSample:
        lens = [int(s.shape[0]) + 1 for s in steps]
        zeros = torch.zeros(self.h, self.w, self.c)
        if self.spec.kind == "released":
            x = torch.zeros(self.j + 1, self.h, self.w, self.c)
            return _released_sample(self.context + [None], x, list(range(len(steps))), lens, 0.0, self.patch)
        clean = [(f, z) for f, z in enumerate(self.context) if z is not None]
        causal = self.spec.attention == "block_causal"
        src = self.context[self.source] if self.spec.condition == "source" and self.source is not None else None
        return _paper_sample(clean, [(self.j, zeros, 0.0, src)], list(range(len(steps))), lens, self.j + 1, self.spec,
                             self.patch, causal)  # fmt: skip

    def _prepare(self, branches: tuple[str, ...]) -> tuple[PackedInput, Tensor, Tensor, Tensor]:
        """Packed template, its text, the rows x_t goes into and the frames whose timestep is t."""
        if branches in self._prepared:
            return self._prepared[branches]
        samples = [self._sample(self.texts[b]) for b in branches]
        backend = self.mask_backend if self.spec.kind == "paper" else "none"
        states = [[s.to(self.device) for s in self.texts[b]] for b in branches]
        packed = pack_samples(samples, states, list(range(len(samples))), self.spec, self.device, backend,
                              with_loss=False)  # fmt: skip
        table = self.dit.prompt_id_embedding.embedding.weight
        with torch.no_grad():
            txt = packed.text(table, self.dit.dtype)
        n_state = self.state_shape[0]
        rows, frames, frame_offset, row_offset = [], [], 0, 0
        for s in samples:
            T, h, w = s.shape
            rows.append(torch.arange(row_offset + T * h * w - n_state, row_offset + T * h * w))
            frames.append(frame_offset + T - 1)
            row_offset += T * h * w
            frame_offset += T
        prepared = (packed, txt, torch.cat(rows).to(self.device), torch.tensor(frames, device=self.device))
        self._prepared[branches] = prepared
        return prepared

    def __call__(self, x_t: Tensor, t: Tensor, branches: Sequence[str]) -> list[Tensor]:
        missing = [b for b in branches if b not in self.texts]
        if missing:
            raise BadInputError(f"no text given for branch(es) {missing}")
        packed, (txt, txt_shape), rows, frames = self._prepare(tuple(branches))
        n = len(branches)
        vid = packed.vid.clone()
        vid[rows, : self.c] = x_t.to(vid.dtype).repeat(n, 1)
        tval = t.reshape(-1)[:1].float().to(self.device)
        if self.spec.kind == "released":  # the release feeds the sampler's timestep to text and video alike
            timestep, frame_t = tval.expand(n).contiguous(), None
        else:
            timestep = packed.timestep
            frame_t = packed.frame_timestep.clone()
            frame_t[frames] = tval
        self.calls += 1
        out = self.dit(
            vid, txt, packed.vid_shape, txt_shape.to(self.device), timestep,
            frame_timestep=frame_t, vid_pos=packed.vid_pos, txt_pos=packed.txt_pos, attn_mask=packed.attn_mask,
        )  # fmt: skip
        out = out[rows]
        if self.spec.prediction != "velocity":
            out = output_velocity(
                self.spec.prediction, vid[rows], out, tval.expand(out.shape[0]), self.spec.source_sigma
            )
        return [o.to(x_t.dtype) for o in out.split(self.state_shape[0])]


def make_denoiser(
    dit,
    layout: LayoutSpec | Any,
    context: Sequence[Tensor | None],
    steps_pos: Sequence[Tensor],
    steps_neg: Sequence[Tensor] | None = None,
    latent_hw: tuple[int, int] | None = None,
    mask_backend: str = "auto",
    source: int | None = None,
) -> SessionDenoiser:
    """The denoiser that generates frame j = len(context) of a session (see the module docstring).

    dit: a `VincieTransformer`; layout: a LayoutSpec, a {"kind", "attention", "rope"} mapping or a
    ModelConfig with a `layout`; context: (h, w, C) latents of frames 0..j-1 (None = unknown);
    steps_pos / steps_neg: per-step text states (n_s, D) (turn embedding s is added here).
    mask_backend: "auto" (FlexAttention on CUDA, dense masks elsewhere), "flex" or "dense".
    source: the context frame the target is edited from (layouts with condition "source"; default: the latest
    known frame, which is right unless mask frames follow the image being edited).
    """
    return SessionDenoiser(dit, layout, context, steps_pos, steps_neg, latent_hw, mask_backend, source)
