"""The synthetic world: procedural videos with exact ground truth, oracle annotation and
segmentation, an objective per-turn edit scorer and a held-out benchmark split.

    from vincie_cli.synth import generate_video, load_ground_truth, find_ground_truth
    video = generate_video("out", seed=7)               # out/synth_0000007.mp4 + .gt.json + .masks.png
    gt = load_ground_truth(find_ground_truth(video))
    gt.state_at(1.0).objects, gt.instance_masks(24), gt.events

See docs/synthetic-world.md.
"""

from vincie_cli.synth.generate import build_timeline, generate_many, generate_video
from vincie_cli.synth.groundtruth import Event, GroundTruth, find_ground_truth, load_ground_truth
from vincie_cli.synth.world import Background, Camera, ObjectState, SceneState, SynthConfig

__all__ = [
    "Background",
    "Camera",
    "Event",
    "GroundTruth",
    "ObjectState",
    "SceneState",
    "SynthConfig",
    "build_timeline",
    "find_ground_truth",
    "generate_many",
    "generate_video",
    "load_ground_truth",
]
