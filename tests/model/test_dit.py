"""Unit tests of the packed MM-DiT: layout, packing, masks, per-frame timesteps, state_dict, config derivation."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import REPO
from vincie_cli.flow.sampler import euler_sample
from vincie_cli.flow.schedule import sampling_timesteps
from vincie_cli.model.conditioning import ReleasedDenoiser, build_condition, pack, pack_text, unpack
from vincie_cli.model.dit import (
    DiTConfig,
    VincieTransformer,
    assemble_session_text,
    build_dit,
    default_txt_positions,
    default_vid_positions,
    forward_flops,
    load_dit_weights,
    patchify,
    unpatchify,
)
from vincie_cli.model.layers import rope_frequencies
from vincie_cli.utils.io import BadInputError

STATE_DICT_LISTING = REPO.parent / "shared" / "reference" / "vincie-3b-state-dict.txt"


def tiny_config(**kw) -> DiTConfig:
    args = dict(vid_dim=32, txt_in_dim=24, heads=2, head_dim=16, num_layers=3, mm_layers=1, mlp_hidden=64, rope_dim=14)
    args.update(kw)
    return DiTConfig(**args)


def tiny_model(seed: int = 0, **kw) -> VincieTransformer:
    torch.manual_seed(seed)
    model = build_dit(tiny_config(**kw)).eval()
    model.attention = "fp32"
    with torch.no_grad():  # make the learned norms matter
        for name, p in model.named_parameters():
            if name.endswith("norm_q.vid.weight") or "norm_k" in name or name == "vid_out_norm.weight":
                p.add_(0.2 * torch.randn_like(p))
    return model


def sample(t: int, h: int, w: int, n_txt: int, cfg: DiTConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, h, w, cfg.vid_in_channels, generator=g), torch.randn(n_txt, cfg.txt_in_dim, generator=g)


def run(model, vids, txts, ts, **kw):
    vid, vid_shape = pack(vids)
    txt, txt_shape = pack_text(txts)
    with torch.no_grad():
        out = model(vid, txt, vid_shape, txt_shape, torch.tensor(ts, dtype=torch.float32), **kw)
    return unpack(out, vid_shape)


# ---------------------------------------------------------------------------------------------- layout


def test_patchify_order_and_inverse():
    x = torch.randn(2, 6, 8, 5)
    p = patchify(x, 2, 2)
    assert p.shape == (2, 3, 4, 20)
    # feature[(dy*2 + dx)*C + c] = x[t, 2i+dy, 2j+dx, c]
    t, i, j, dy, dx, c = 1, 2, 3, 1, 0, 4
    assert p[t, i, j, (dy * 2 + dx) * 5 + c] == x[t, 2 * i + dy, 2 * j + dx, c]
    assert torch.equal(unpatchify(p, 2, 2), x)


def test_pack_unpack_roundtrip():
    items = [torch.randn(2, 4, 6, 3), torch.randn(1, 2, 2, 3)]
    packed, shapes = pack(items)
    assert packed.shape == (2 * 4 * 6 + 4, 3) and shapes.tolist() == [[2, 4, 6], [1, 2, 2]]
    assert all(torch.equal(a, b) for a, b in zip(unpack(packed, shapes), items))
    with pytest.raises(BadInputError, match="rows"):
        unpack(packed[:-1], shapes)


def test_default_positions_follow_release_layout():
    txt = default_txt_positions([3, 2])
    assert txt.tolist() == [[0, 0, 0], [1, 1, 1], [2, 2, 2], [0, 0, 0], [1, 1, 1]]
    vid = default_vid_positions([(2, 2, 3), (1, 1, 2)], [3, 2])
    assert vid.shape == (2 * 2 * 3 + 2, 3)
    assert vid[0].tolist() == [3, 0, 0]  # frame 0 sits after the 3 text tokens
    assert vid[6 + 5].tolist() == [4, 1, 2]  # frame 1, row 1, col 2
    assert vid[12:].tolist() == [[2, 0, 0], [2, 0, 1]]


def test_build_condition_layout():
    z = torch.randn(2, 3, 4, 16)
    cond = build_condition(z)
    assert cond.shape == (3, 3, 4, 17)
    assert torch.equal(cond[:2, ..., :16], z) and (cond[:2, ..., 16] == 1).all() and (cond[2] == 0).all()
    assert (build_condition(torch.zeros(0, 3, 4, 16)) == 0).all()


# ---------------------------------------------------------------------------------------------- forward


def test_packed_batch_equals_samples_run_alone():
    model = tiny_model()
    cfg = model.config
    shapes = [((2, 4, 6), 5), ((3, 2, 4), 9), ((1, 6, 2), 3)]
    data = [sample(*s, n, cfg, seed=i) for i, (s, n) in enumerate(shapes)]
    ts = [998.3, 500.0, 196.72]
    together = run(model, [v for v, _ in data], [t for _, t in data], ts)
    for i, (v, t) in enumerate(data):
        alone = run(model, [v], [t], [ts[i]])[0]
        assert together[i].shape == (*v.shape[:3], cfg.vid_out_channels)
        torch.testing.assert_close(together[i], alone, atol=1e-5, rtol=1e-5)
    # attention never crosses samples: changing sample 2 leaves sample 0 untouched
    data2 = list(data)
    data2[2] = (data[2][0] + 1.0, data[2][1] - 1.0)
    again = run(model, [v for v, _ in data2], [t for _, t in data2], ts)
    torch.testing.assert_close(again[0], together[0], atol=1e-6, rtol=1e-6)
    assert (again[2] - together[2]).abs().max() > 1e-3


def test_all_true_mask_equals_no_mask():
    model = tiny_model()
    v, t = sample(2, 4, 4, 6, model.config, seed=1)
    n = 2 * 2 * 2 + 6
    ref = run(model, [v], [t], [700.0])[0]
    masked = run(model, [v], [t], [700.0], attn_mask=[torch.ones(n, n, dtype=torch.bool)])[0]
    torch.testing.assert_close(masked, ref, atol=1e-6, rtol=1e-6)


def test_block_causal_mask_hides_later_frames():
    model = tiny_model()
    cfg = model.config
    v, t = sample(3, 4, 4, 5, cfg, seed=2)
    per_frame, n_vid, n_txt = 4, 12, 5
    frame = torch.arange(n_vid) // per_frame
    mask = torch.zeros(n_vid + n_txt, n_vid + n_txt, dtype=torch.bool)
    mask[:n_vid, :n_vid] = frame[:, None] >= frame[None, :]  # video sees itself and earlier frames
    mask[:n_vid, n_vid:] = True  # ... and the text
    mask[n_vid:, n_vid:] = True  # text sees only text
    v2 = v.clone()
    v2[2] += 3.0  # change the last frame
    a = run(model, [v], [t], [400.0], attn_mask=[mask])[0]
    b = run(model, [v2], [t], [400.0], attn_mask=[mask])[0]
    assert torch.equal(a[:2], b[:2])
    assert (a[2] - b[2]).abs().max() > 1e-3
    # without the mask the change leaks into earlier frames
    a_full, b_full = run(model, [v], [t], [400.0])[0], run(model, [v2], [t], [400.0])[0]
    assert (a_full[:2] - b_full[:2]).abs().max() > 1e-4


def test_frame_timestep_equal_to_sample_timestep_is_default():
    model = tiny_model()
    cfg = model.config
    data = [sample(2, 4, 4, 5, cfg, seed=3), sample(3, 2, 2, 4, cfg, seed=4)]
    vids, txts = [d[0] for d in data], [d[1] for d in data]
    ref = run(model, vids, txts, [300.0, 800.0])
    same = run(model, vids, txts, [300.0, 800.0], frame_timestep=torch.tensor([300.0] * 2 + [800.0] * 3))
    for a, b in zip(ref, same):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # a clean first frame (t = 0) changes the result
    other = run(model, vids, txts, [300.0, 800.0], frame_timestep=torch.tensor([0.0, 300.0, 800.0, 800.0, 800.0]))
    assert (other[0] - ref[0]).abs().max() > 1e-3


def test_position_overrides():
    model = tiny_model()
    v, t = sample(2, 4, 4, 5, model.config, seed=5)
    vid_pos = default_vid_positions([(2, 2, 2)], [5])
    txt_pos = default_txt_positions([5])
    ref = run(model, [v], [t], [500.0])[0]
    same = run(model, [v], [t], [500.0], vid_pos=vid_pos, txt_pos=txt_pos)[0]
    torch.testing.assert_close(same, ref, atol=1e-6, rtol=1e-6)
    shifted = run(model, [v], [t], [500.0], vid_pos=vid_pos - torch.tensor([5.0, 0, 0]), txt_pos=txt_pos)[0]
    assert (shifted - ref).abs().max() > 1e-4  # the temporal offset L_text matters
    with pytest.raises(BadInputError, match="vid_pos"):
        run(model, [v], [t], [500.0], vid_pos=vid_pos[:-1])


def test_bf16_attention_close_to_fp32():
    model = tiny_model()
    v, t = sample(2, 4, 4, 5, model.config, seed=6)
    ref = run(model, [v], [t], [500.0])[0]
    model.attention = "bf16"
    bf = run(model, [v], [t], [500.0])[0]
    diff = (bf - ref).abs().max().item()
    assert 0 < diff < 2e-2
    model.attention = "fp16"
    with pytest.raises(ValueError, match="attention"):
        run(model, [v], [t], [500.0])


def test_gelu_mlp_all_mm_layers_and_odd_shapes():
    # GELU MLP, every block mm, qkv bias, attention width != model width, odd rope axis width (5 -> 2 freqs)
    model = tiny_model(mlp_type="gelu", mm_layers=3, num_layers=3, qk_bias=True, heads=3, head_dim=14, rope_dim=15)
    keys = model.state_dict().keys()
    assert "blocks.0.mlp.vid.proj_in.bias" in keys and "blocks.2.mlp.vid.proj_out.weight" in keys
    assert not any(k.startswith("blocks.2.mlp.txt") for k in keys)  # last block: video-only MLP
    assert DiTConfig.from_state_dict(model.state_dict()) == model.config
    v, t = sample(1, 2, 2, 3, model.config, seed=7)
    out = run(model, [v], [t], [10.0])[0]
    assert out.shape == (1, 2, 2, 16) and torch.isfinite(out).all()


def test_input_shape_errors():
    model = tiny_model()
    v, t = sample(1, 4, 4, 3, model.config, seed=8)
    with pytest.raises(BadInputError, match="patch"):
        model(v.reshape(-1, 33)[:12], t, torch.tensor([[1, 3, 4]]), torch.tensor([[3]]), torch.tensor([1.0]))
    with pytest.raises(BadInputError, match="txt has shape"):
        model(v.reshape(-1, 33), t, torch.tensor([[1, 4, 4]]), torch.tensor([[4]]), torch.tensor([1.0]))


def test_gradient_checkpointing_same_gradients():
    model = tiny_model()
    model.train()
    v, t = sample(2, 2, 2, 3, model.config, seed=9)
    args = (v.reshape(-1, 33), t, torch.tensor([[2, 2, 2]]), torch.tensor([[3]]), torch.tensor([250.0]))
    model(*args).square().mean().backward()
    g1 = model.blocks[0].attn.proj_qkv.vid.weight.grad.clone()
    model.zero_grad()
    model.gradient_checkpointing = True
    model(*args).square().mean().backward()
    torch.testing.assert_close(model.blocks[0].attn.proj_qkv.vid.weight.grad, g1, atol=1e-6, rtol=1e-5)


def test_batched_cfg_equals_two_passes():
    model = tiny_model()
    cfg = model.config
    g = torch.Generator().manual_seed(11)
    cond = build_condition(torch.randn(2, 4, 4, 16, generator=g))
    noise = torch.randn(3 * 16, 16, generator=g)
    pos, pos_shape = torch.randn(9, cfg.txt_in_dim, generator=g), torch.tensor([[9]])
    neg, neg_shape = torch.randn(4, cfg.txt_in_dim, generator=g), torch.tensor([[4]])
    finals = []
    for batched in (False, True):
        den = ReleasedDenoiser(model, cond.reshape(-1, 17), torch.tensor([[3, 4, 4]]), pos, pos_shape, neg, neg_shape)
        with torch.no_grad():
            finals.append(euler_sample(noise, den, sampling_timesteps(6), cfg_scale=5.0, batched=batched))
        assert den.calls == (6 if batched else 12)
    torch.testing.assert_close(finals[1], finals[0], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- text


def test_assemble_session_text_layout_and_limits():
    table = torch.arange(4 * 3, dtype=torch.float32).reshape(4, 3)
    s0, s1 = torch.full((2, 3), -1.0, dtype=torch.bfloat16), torch.full((1, 3), -2.0, dtype=torch.bfloat16)
    txt, shape = assemble_session_text([[s0, s1], [s1]], table)
    assert txt.dtype == torch.float32 and shape.tolist() == [[5], [2]]
    assert torch.equal(txt[0], table[0]) and torch.equal(txt[3], table[1]) and torch.equal(txt[5], table[0])
    assert (txt[1:3] == -1).all() and (txt[4] == -2).all() and (txt[6] == -2).all()
    with pytest.raises(BadInputError, match="5 prompts.*4 rows"):
        assemble_session_text([[s1] * 5], table)


def test_too_many_turns_for_released_table():
    table = torch.zeros(64, 8)
    with pytest.raises(BadInputError, match="65 prompts.*64"):
        assemble_session_text([[torch.zeros(2, 8)] * 65], table)


# ---------------------------------------------------------------------------------------------- state_dict


def test_meta_build_of_3b_matches_released_listing():
    model = build_dit(DiTConfig(), device="meta")
    sd = model.state_dict()
    assert len(sd) == 636
    assert sum(p.numel() for p in model.parameters()) == 3_391_803_456
    assert sum(b.numel() for b in model.buffers()) == 32 * 21
    if not STATE_DICT_LISTING.is_file():
        pytest.skip(f"reference listing not found at {STATE_DICT_LISTING}")
    listing = [line.strip() for line in STATE_DICT_LISTING.read_text().splitlines() if line.strip()]
    ours = [f"{k} [{','.join(str(s) for s in v.shape)}]" for k, v in sd.items()]
    assert ours == listing
    assert DiTConfig.from_state_dict(sd) == DiTConfig()


def test_7b_like_config_builds_on_meta():
    cfg = DiTConfig(vid_dim=3584, heads=28, head_dim=128, num_layers=40, mm_layers=12, mlp_hidden=9728, max_turns=64)
    model = build_dit(cfg, device="meta", dtype=torch.bfloat16)
    assert model.blocks[0].attn.proj_qkv.vid.weight.dtype == torch.bfloat16
    assert model.blocks[0].attn.rope.rope.freqs.dtype == torch.float32
    assert DiTConfig.from_state_dict(model.state_dict()) == cfg
    n = sum(p.numel() for p in model.parameters())
    assert 6e9 < n < 9e9


def test_forward_flops_counts_every_matmul():
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_model()
    cfg = model.config
    v, t = sample(2, 4, 6, 5, cfg, seed=13)
    counter = FlopCounterMode(display=False)
    with counter:
        run(model, [v], [t], [3.0])
    d = cfg.vid_dim
    time_mlp = 2 * (256 * d + d * d + d * 6 * d)  # counted by torch, left out by forward_flops
    attention = cfg.num_layers * 2 * 2 * (12 + 5) ** 2 * d  # CPU SDPA is not counted by torch
    assert forward_flops(cfg, [12], [5]) == counter.get_total_flops() - time_mlp + attention


def test_strict_loading_names_keys():
    model = tiny_model()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    target = tiny_model(seed=1)

    missing = dict(sd)
    del missing["blocks.1.attn.proj_out.all.bias"]
    with pytest.raises(BadInputError, match=r"missing keys: blocks\.1\.attn\.proj_out\.all\.bias"):
        load_dit_weights(target, missing)

    extra = dict(sd, **{"blocks.9.attn.proj_qkv.all.weight": torch.zeros(1)})
    with pytest.raises(BadInputError, match=r"unexpected keys: blocks\.9\.attn\.proj_qkv\.all\.weight"):
        load_dit_weights(target, extra)

    bad = dict(sd, **{"txt_in.weight": torch.zeros(32, 25)})
    with pytest.raises(BadInputError, match=r"mis-shaped keys: txt_in\.weight \[32, 25\] \(model \[32, 24\]\)"):
        load_dit_weights(target, bad, strict=False)

    freqs = dict(sd, **{"blocks.0.attn.rope.rope.freqs": torch.tensor([1.0, 0.5])})
    with pytest.raises(BadInputError, match="RoPE frequencies"):
        load_dit_weights(target, freqs)


def test_loading_release_quirks_and_meta_assign():
    model = tiny_model()
    sd = {f"_flops_wrap_module.{k}": v.clone() for k, v in model.state_dict().items() if "rope.rope.freqs" not in k}
    v, t = sample(2, 2, 4, 3, model.config, seed=10)
    ref = run(model, [v], [t], [123.0])[0]

    target = build_dit(model.config, device="meta")
    target.attention = "fp32"
    load_dit_weights(target, sd)  # prefixes stripped, freqs recomputed, assigned without copies
    assert not any(p.is_meta for p in target.parameters()) and not any(b.is_meta for b in target.buffers())
    torch.testing.assert_close(run(target.eval(), [v], [t], [123.0])[0], ref, atol=0, rtol=0)

    no_turns = {k: x for k, x in sd.items() if "prompt_id_embedding" not in k}
    with pytest.raises(BadInputError, match="missing keys: prompt_id_embedding.embedding.weight"):
        load_dit_weights(build_dit(model.config), no_turns)
    report = load_dit_weights(build_dit(model.config), no_turns, strict=False)
    assert report.missing == ["prompt_id_embedding.embedding.weight"]


def test_bf16_model_keeps_fp32_rope():
    model = build_dit(tiny_config(), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    load_dit_weights(model, tiny_model().state_dict())
    assert model.blocks[1].attn.rope.rope.freqs.dtype == torch.float32
    v, t = sample(1, 2, 2, 3, model.config, seed=12)
    assert run(model.eval(), [v], [t], [5.0])[0].dtype == torch.bfloat16
    # a checkpoint saved in bf16 (buffers included) still derives the config and loads
    sd16 = {k: v.bfloat16() for k, v in tiny_model().state_dict().items()}
    assert DiTConfig.from_state_dict(sd16) == tiny_config()
    fp32 = build_dit(tiny_config())
    load_dit_weights(fp32, sd16)
    assert fp32.dtype == torch.float32 and torch.equal(fp32.blocks[0].attn.rope.rope.freqs, rope_frequencies(4))


def test_config_derivation_errors():
    sd = tiny_model().state_dict()
    with pytest.raises(BadInputError, match="vid_in.proj.weight"):
        DiTConfig.from_state_dict({k: v for k, v in sd.items() if k != "vid_in.proj.weight"})
    shared = build_dit(tiny_config(mm_layers=0)).state_dict()
    odd = {(k.replace(".all.", ".vid.") if k.startswith("blocks.1.") else k): v for k, v in shared.items()}
    with pytest.raises(BadInputError, match="prefix"):
        DiTConfig.from_state_dict(odd)
    with pytest.raises(BadInputError, match="emb_in.proj_out.weight"):
        DiTConfig.from_state_dict(dict(sd, **{"emb_in.proj_out.weight": torch.zeros(100, 32)}))
    with pytest.raises(BadInputError, match="mlp_type"):
        DiTConfig(mlp_type="relu")
    with pytest.raises(BadInputError, match="patch_size"):
        DiTConfig(patch_size=(2, 2, 2))
