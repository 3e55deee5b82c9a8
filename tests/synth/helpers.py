"""Hand-built scenes and ground truths for the synth tests."""

from __future__ import annotations

import dataclasses

from vincie_cli.synth.groundtruth import Event, GroundTruth
from vincie_cli.synth.world import Background, Camera, ObjectState, SceneState


def obj(oid: str, shape: str, colour: str, size: str, x: float, y: float, **kw) -> ObjectState:
    return ObjectState(id=oid, shape=shape, colour=colour, size=size, position=(x, y), **kw)


def scene(*objects: ObjectState, bg: Background | None = None, camera: Camera | None = None) -> SceneState:
    return SceneState(tuple(objects), bg or Background("solid", "gray"), camera or Camera())


def replace_obj(state: SceneState, oid: str, **changes) -> SceneState:
    """`state` with object `oid` changed; a new colour or size also resets the drawn rgb / radius."""
    out = []
    for o in state.objects:
        if o.id == oid:
            d = {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
            d.update(changes)
            if "colour" in changes:
                d["rgb"] = None
            if "size" in changes:
                d["radius"] = -1.0
            o = ObjectState(**d)
        out.append(o)
    return dataclasses.replace(state, objects=tuple(out))


def timeline(
    start: SceneState, steps: list[tuple[str, SceneState]], size=(64, 64), fps=10, hold=4, motion=4
) -> GroundTruth:
    """A GroundTruth with one event per step: `hold` static frames, then `motion` frames of change."""
    states = [start]
    events = []
    f = hold
    for kind, state in steps:
        events.append(Event(kind, f, f + motion, fps))
        states.append(state)
        f += motion + hold
    ids = []
    for s in states:
        for o in s.objects:
            if o.id not in ids:
                ids.append(o.id)
    return GroundTruth(fps, size, f, states, events, {oid: i + 1 for i, oid in enumerate(ids)})
