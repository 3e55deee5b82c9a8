import json
import shutil

import numpy as np
import pytest
import torch

from tests.sessions.helpers import write_clips
from vincie_cli.cli import main
from vincie_cli.records import camera_tag
from vincie_cli.sessions import SessionDataset
from vincie_cli.sessions.cache import CacheOptions, build_cache, canonical
from vincie_cli.utils.io import VincieError

RES = 64


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny VINCIE checkpoints with different weights (saved, as a user would have them)."""
    from vincie_cli.model.presets import build_model

    root = tmp_path_factory.mktemp("models")
    for seed in (0, 1):
        build_model("tiny", seed=seed).save_pretrained(root / f"tiny{seed}")
    return root / "tiny0", root / "tiny1"


@pytest.fixture(scope="module")
def cached(tmp_path_factory, models):
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("cache")
    clips = write_clips(root / "seg", n_clips=3, n_frames=3, size=(64, 48), masks=True)
    res = CliRunner().invoke(
        main,
        [
            "build-sessions",
            str(root / "seg"),
            "-o",
            str(root / "out"),
            "--image-format",
            "png",
            "--val-fraction",
            "0",
            "--cache-model",
            str(models[0]),
            "--cache-resolution",
            str(RES),
            "--dtype",
            "float32",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in res.stdout.splitlines()]
    assert [r["type"] for r in recs] == ["shard", "summary", "cache"] and recs[2]["sessions"] == 3
    return root, clips


def test_cache_holds_the_models_latents_and_text(cached, models):
    from PIL import Image

    from vincie_cli.model.images import preprocess
    from vincie_cli.model.pipeline import VincieModel

    root, clips = cached
    model = VincieModel.from_pretrained(models[0])
    sessions = list(SessionDataset([str(root / "out")], cache_identity=model.identity()))
    assert len(sessions) == 3
    for s in sessions:
        c = s.cache
        assert c["resolution"] == RES and c["text_format"] == "camera"
        assert len(c["latents"]) == 3 and len(c["texts"]) == 2
        with torch.no_grad():
            want = model.vae.encode(torch.stack([preprocess(Image.fromarray(f), RES) for f in s.frames]))
            for got, w in zip(c["latents"], want):
                assert got.shape == w.shape and got.shape[-1] == 16
                torch.testing.assert_close(got, w, rtol=1e-4, atol=1e-4)
            texts = model.encode_prompts([camera_tag(cam) + t for t, cam in zip(s.texts, s.cameras)])
        for got, w in zip(c["texts"], texts):
            torch.testing.assert_close(got, w)
        assert all(m is not None and m.shape == c["latents"][0].shape for m in c["src_masks"] + c["dst_masks"])
        m = s.src_masks[0]
        rgb = Image.fromarray(np.repeat((m * 255).astype(np.uint8)[..., None], 3, 2))
        with torch.no_grad():
            torch.testing.assert_close(
                c["src_masks"][0], model.vae.encode(preprocess(rgb, RES)[None])[0], rtol=1e-4, atol=1e-4
            )


def test_stale_or_missing_cache_is_never_used(cached, models, tmp_path):
    from vincie_cli.model.pipeline import VincieModel

    root, _ = cached
    other = VincieModel.from_pretrained(models[1]).identity()
    with pytest.raises(VincieError, match="stale cache") as e:
        SessionDataset([str(root / "out")], cache_identity=other)
    assert other["sha256"][:16] in str(e.value)
    # the same weights moved elsewhere keep their cache (identity = name + sha256, not the path)
    moved = shutil.copytree(models[0], tmp_path / "moved")
    ident = VincieModel.from_pretrained(moved).identity()
    assert ident["path"] != str(models[0]) and canonical(ident) == canonical(
        VincieModel.from_pretrained(models[0]).identity()
    )
    assert next(iter(SessionDataset([str(root / "out")], cache_identity=ident))).cache is not None
    # no cache at all
    shutil.copytree(root / "out", tmp_path / "nocache", ignore=shutil.ignore_patterns("cache"))
    with pytest.raises(VincieError, match="no latent cache"):
        SessionDataset([str(tmp_path / "nocache")], cache_identity=ident)
    # without cache_identity, sessions come without cache
    assert next(iter(SessionDataset([str(root / "out")]))).cache is None


def test_cache_resumes_and_keys_by_resolution(cached, models):
    root, _ = cached
    again = list(build_cache(root / "out", CacheOptions(model=str(models[0]), resolution=RES, dtype="float32")))
    assert again == []  # every shard is cached already
    from click.testing import CliRunner

    res = CliRunner().invoke(
        main,
        [
            "build-sessions",
            "--cache-only",
            "-o",
            str(root / "out"),
            "--cache-model",
            str(models[0]),
            "--cache-resolution",
            "32",
            "--dtype",
            "float32",
        ],
    )
    assert res.exit_code == 0, res.output
    other = [json.loads(x) for x in res.stdout.splitlines()]
    assert [r["type"] for r in other] == ["cache"]
    ids = sorted(json.loads(p.read_text())["cache_id"] for p in (root / "out/cache").glob("*/cache.json"))
    assert len(ids) == 2 and other[0]["cache_id"] in ids  # another resolution: another cache beside the first
    from vincie_cli.model.pipeline import VincieModel
    from vincie_cli.utils.io import UsageError

    ident = VincieModel.from_pretrained(models[0]).identity()
    with pytest.raises(UsageError, match="several caches of this model"):
        SessionDataset([str(root / "out")], cache_identity=ident)
    s = next(iter(SessionDataset([str(root / "out")], cache_identity=ident, cache_resolution=32)))
    assert s.cache["resolution"] == 32 and s.cache["latents"][0].shape[:2] != (RES // 8, RES // 8)
