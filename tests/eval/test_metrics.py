import numpy as np
import pytest
from PIL import Image

from tests.eval.helpers import noise_image
from vincie_cli.eval import metrics as mx
from vincie_cli.utils.io import VincieError


def test_pixel_distances_against_numpy():
    gen = Image.new("RGB", (4, 3), (128, 0, 255))
    gt = Image.new("RGB", (4, 3), (0, 0, 0))
    l1, l2 = mx.pixel_distances(gen, gt)
    per_channel = np.array([128, 0, 255]) / 255
    assert l1 == pytest.approx(per_channel.mean(), abs=1e-12)
    assert l2 == pytest.approx((per_channel**2).mean(), abs=1e-12)  # mean squared error, not its root

    a, b = noise_image(1, (40, 30)), noise_image(2, (20, 15))
    l1, l2 = mx.pixel_distances(b, a)  # the generated image is resized to the truth's size (bicubic)
    d = np.asarray(b.resize((40, 30), Image.Resampling.BICUBIC), float) / 255 - np.asarray(a, float) / 255
    assert (l1, l2) == pytest.approx((np.abs(d).mean(), (d**2).mean()), abs=1e-12)
    assert mx.pixel_distances(a, a) == (0.0, 0.0)


@pytest.mark.parametrize(
    "size, short, resized, crop, box",
    [
        ((40, 30), 24, (32, 24), 24, (4, 0)),
        ((45, 30), 20, (30, 20), 20, (5, 0)),
        ((30, 47), 20, (20, 31), 20, (0, 6)),  # 31 * 20/30 truncates; (31 - 20) / 2 = 5.5 rounds to 6
        ((25, 20), 20, (25, 20), 20, (2, 0)),  # (25 - 20) / 2 = 2.5 rounds half to even: 2
    ],
)
def test_resize_and_crop_follow_torchvision_conventions(size, short, resized, crop, box):
    img = noise_image(0, size)
    r = mx.resize_shorter(img, short)
    assert r.size == resized
    c = mx.center_crop(r, crop)
    assert c.size == (crop, crop)
    assert np.array_equal(np.asarray(c), np.asarray(r)[box[1] : box[1] + crop, box[0] : box[0] + crop])


def test_normalisation_constants():
    x = mx.clip_pixels(Image.new("RGB", (50, 40), (255, 128, 0)), 16)
    assert x.shape == (3, 16, 16) and x.dtype == np.float32
    expected = (np.array([1.0, 128 / 255, 0.0]) - np.array(mx.CLIP_MEAN)) / np.array(mx.CLIP_STD)
    assert np.allclose(x[:, 5, 5], expected, atol=1e-6)
    d = mx.dino_pixels(Image.new("RGB", (300, 260), (255, 128, 0)), 224)
    assert d.shape == (3, 224, 224)
    assert np.allclose(
        d[:, 0, 0],
        (np.array([1.0, 128 / 255, 0.0]) - np.array(mx.IMAGENET_MEAN)) / np.array(mx.IMAGENET_STD),
        atol=1e-6,
    )


def test_cosine():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0]])
    assert np.allclose(mx.cosine(a, b), [0.0, 1.0])


def test_tiny_clip_and_dino_through_the_real_code(tiny_models):
    import torch

    clip_dir, dino_dir = tiny_models
    clip = mx.load_clip(str(clip_dir))
    dino = mx.load_dino(str(dino_dir))
    fx = mx.FeatureExtractor(clip, dino, batch_size=2)
    imgs = [noise_image(i, (48 + 8 * i, 40)) for i in range(3)]

    feats = fx.clip_images(imgs)
    assert feats.shape == (3, 16)
    x = torch.from_numpy(np.stack([mx.clip_pixels(im, 32) for im in imgs]))
    with torch.no_grad():
        direct = clip[0].visual_projection(clip[0].vision_model(pixel_values=x).pooler_output).numpy()
    assert np.allclose(feats, direct, atol=1e-5)
    assert np.allclose(fx.clip_images(imgs[2:]), feats[2:], atol=1e-5)  # batching does not change results
    assert mx.cosine(feats[:1], fx.clip_images(imgs[:1]))[0] == pytest.approx(1.0)

    texts = ["a red cat", "x" * 100]
    t = fx.clip_texts(texts)
    assert t.shape == (2, 16) and fx.truncated_captions == 1
    ids = clip[1](["a red cat"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        direct_t = clip[0].text_projection(clip[0].text_model(input_ids=ids).pooler_output).numpy()
    assert np.allclose(t[:1], direct_t, atol=1e-5)

    d = fx.dino_images(imgs)
    assert d.shape == (3, 24)
    xd = torch.from_numpy(np.stack([mx.dino_pixels(im, 32) for im in imgs]))
    with torch.no_grad():
        assert np.allclose(d, dino(pixel_values=xd).last_hidden_state[:, 0].numpy(), atol=1e-5)


def test_unavailable_model_is_a_clear_error(tmp_path):
    with pytest.raises(VincieError, match=r"CLIP model .*could not be loaded.*--clip-model"):
        mx.load_clip(str(tmp_path / "no-clip"))
    with pytest.raises(VincieError, match=r"DINO model 'someone/no-such-dino' could not be loaded"):
        mx.load_dino("someone/no-such-dino")
