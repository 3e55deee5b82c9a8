import numpy as np
from PIL import Image

from tests.conftest import parity_dir
from vincie_cli.synth.benchmark import make_benchmark
from vincie_cli.synth.detect import explained_fraction, looks_synthetic


def test_benchmark_frames_are_recognised():
    for session in make_benchmark(3, 64):
        assert looks_synthetic(Image.fromarray(session.start_image))
        for turn in session.turns:
            assert looks_synthetic(Image.fromarray(turn.image))


def test_other_images_are_not(tmp_path):
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert not looks_synthetic(noise)
    # a smooth "photo-like" scene: sky-blue to green with skin-like tones
    y, x = np.mgrid[0:64, 0:64] / 63.0
    photo = np.stack([120 + 90 * x, 170 - 60 * y, 200 - 150 * y * x], -1) + rng.normal(0, 25, (64, 64, 3))
    photo = photo.clip(0, 255).astype(np.uint8)
    assert explained_fraction(Image.fromarray(photo)) < 0.8
    assert not looks_synthetic(Image.fromarray(photo))
    for png in sorted((parity_dir() / "preprocess").glob("image_*.png")):
        assert not looks_synthetic(png), png


def test_decoded_video_frames_are_recognised(tmp_path):
    import av

    from vincie_cli.synth import SynthConfig, generate_video

    video = generate_video(tmp_path, seed=3, config=SynthConfig(width=64, height=64, duration=1.0))
    with av.open(str(video)) as c:
        frames = [f.to_image() for f in c.decode(video=0)]
    assert all(looks_synthetic(f) for f in frames[::6])
