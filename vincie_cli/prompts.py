"""The session text format shared by training and editing: prompt templates and the frame/step plan.

A session is a stack of frames (images and, for chain-of-editing, change masks) with one text
step between consecutive frames: step s describes how frame s+1 follows from the frames before it
and uses turn embedding s. `plan_session` lays a list of editing turns out as frames and steps;
`train` and `edit` both use it, so a model sees at inference exactly the texts it was trained on.

    turn k, chain off:                     ... I_k ─"Based on <IMGj>, p. Output <IMGj+1>: "─► I_k+1
    turn k, chain current,next:            ... I_k ─mask prompt─► M_src ─mask prompt─► M_dst ─edit prompt─► I_k+1

Frame numbers in `<IMGj>` count every frame of the stack (images and masks) from 0.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

# Our own negative prompt. The released model was sampled with a longer list of quality terms; a
# user can pass that exact text with --negative-prompt-file, which we recognise by its SHA-256.
DEFAULT_NEGATIVE_PROMPT = (
    "low quality, worst quality, blurry, out of focus, jpeg artifacts, noisy, grainy, pixelated, "
    "distorted, deformed, disfigured, bad anatomy, extra limbs, missing limbs, malformed hands, "
    "duplicated objects, cropped, cut off, watermark, signature, text, logo, oversaturated, "
    "underexposed, overexposed, washed out colors, unnatural lighting, artifacts, glitch"
)
OFFICIAL_NEGATIVE_PROMPT_SHA256 = "c42c6c99a19c72beb34513503dceb1e99a6675a57216661ff3903b24ed4474bf"

Role = Literal["image", "mask_src", "mask_dst"]
Task = Literal["nip", "csp", "nsp", "label"]  # next-image, current-/next-segmentation prediction, input label


def is_official_negative(text: str) -> bool:
    return hashlib.sha256(text.encode("utf-8")).hexdigest() == OFFICIAL_NEGATIVE_PROMPT_SHA256


def clean_instruction(prompt: str, camera_prefix: str = "") -> str:
    """The released rule: camera prefix first, then strip whitespace, then leading/trailing dots."""
    return (camera_prefix + prompt).strip().strip(".")


def edit_text(src: int, dst: int, prompt: str, camera_prefix: str = "", template: bool = True) -> str:
    """The released editing template (note the trailing space), or the raw prompt when `template` is off."""
    if not template:
        return camera_prefix + prompt
    return f"Based on <IMG{src}>, {clean_instruction(prompt, camera_prefix)}. Output <IMG{dst}>: "


def src_mask_text(src: int, dst: int, prompt: str, camera_prefix: str = "") -> str:
    """Current-segmentation step: paint the region of frame `src` that the instruction will change."""
    p = clean_instruction(prompt, camera_prefix)
    return f"In <IMG{src}>, paint white the area that this edit changes, black elsewhere: {p}. Output <IMG{dst}>: "


def dst_mask_text(src: int, dst: int, prompt: str, camera_prefix: str = "") -> str:
    """Next-segmentation step: paint where the changed content will be after the edit."""
    p = clean_instruction(prompt, camera_prefix)
    return f"After this edit of <IMG{src}>, paint white where the edited content will be: {p}. Output <IMG{dst}>: "


@dataclass(frozen=True)
class TurnSpec:
    """One editing turn: the instruction and which change masks precede the edited image."""

    instruction: str
    camera_prefix: str = ""
    src_mask: bool = False
    dst_mask: bool = False


@dataclass(frozen=True)
class Frame:
    role: Role
    turn: int  # the turn that produced it; -1 for input images


@dataclass(frozen=True)
class Step:
    text: str
    task: Task
    turn: int
    target: int  # index of the frame this step produces (= step index + 1 in a single-input session)


def plan_session(turns: list[TurnSpec], num_inputs: int = 1, template: bool = True) -> tuple[list[Frame], list[Step]]:
    """Lay turns out as frames and text steps; step s always produces frame s+1.

    With several input images (multi-concept composition), label steps "<IMGi>: " introduce inputs
    1.., and the first turn's edit step refers to every input ("Based on <IMG0>, <IMG1>, ...").
    """
    frames = [Frame("image", -1)]
    steps: list[Step] = []
    for i in range(1, num_inputs):
        steps.append(Step(input_label_text(i), "label", -1, i))
        frames.append(Frame("image", -1))
    current = num_inputs - 1
    for k, turn in enumerate(turns):
        if turn.src_mask:
            steps.append(
                Step(src_mask_text(current, len(frames), turn.instruction, turn.camera_prefix), "csp", k, len(frames))
            )
            frames.append(Frame("mask_src", k))
        if turn.dst_mask:
            steps.append(
                Step(dst_mask_text(current, len(frames), turn.instruction, turn.camera_prefix), "nsp", k, len(frames))
            )
            frames.append(Frame("mask_dst", k))
        if k == 0 and num_inputs > 1 and template:
            text = composition_text(num_inputs, clean_instruction(turn.instruction, turn.camera_prefix), len(frames))
        else:
            text = edit_text(current, len(frames), turn.instruction, turn.camera_prefix, template)
        steps.append(Step(text, "nip", k, len(frames)))
        frames.append(Frame("image", k))
        current = len(frames) - 1
    return frames, steps


def input_label_text(index: int) -> str:
    """The label step that introduces input image `index` (>= 1) in a multi-image session."""
    return f"<IMG{index}>: "


def composition_text(num_inputs: int, caption: str, dst: int | None = None) -> str:
    """The step that composes input images 0..num_inputs-1 into frame `dst` (default num_inputs)."""
    refs = ", ".join(f"<IMG{i}>" for i in range(num_inputs))
    dst = num_inputs if dst is None else dst
    return f"Based on {refs}, {caption.strip().strip('.')}. Output <IMG{dst}>: "
