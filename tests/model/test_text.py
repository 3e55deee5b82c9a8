"""Text encoders: the QWen v1 tokenizer on tiktoken, the QWen v1 -> Qwen2Model conversion (checked against an
independent QWen v1 forward written here), EOD handling, T5, the byte encoder, save/load round trips."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from tests.model.fake_release import QWEN_TINY, write_qwen_v1_folder, write_tiktoken
from vincie_cli.model.text import (
    ByteTextEncoder,
    QwenTextEncoder,
    QwenTokenizer,
    T5TextEncoder,
    TextEncoderConfig,
    load_text_encoder,
)
from vincie_cli.utils.io import BadInputError

# ids in the fake ranks file: bytes 0..255, then the merges in order
HELLO, WORLD, THE, EOD = 259, 263, 265, 267


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("llm14b")
    sd = write_qwen_v1_folder(d, fmt="safetensors", seed=1)
    cfg = json.loads((d / "config.json").read_text())  # non-default values, to check they are carried over
    (d / "config.json").write_text(json.dumps({**cfg, "rotary_emb_base": 500, "layer_norm_epsilon": 1e-5}))
    return d, sd


def qwen_v1_reference(sd: dict, ids: list[int], layers: int, heads: int, base: float, eps: float) -> torch.Tensor:
    """QWen v1's forward for one unpadded prompt, from its published block math (fp64)."""
    p = {k: v.double() for k, v in sd.items()}
    x = p["transformer.wte.weight"][ids]
    n, hidden = x.shape
    d = hidden // heads
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = torch.outer(torch.arange(n, dtype=torch.float64), inv)
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]

    def rms(v, w):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * w

    def rotate(v):  # half-split rotation over all head dims
        return v * cos + torch.cat([-v[..., d // 2 :], v[..., : d // 2]], -1) * sin

    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for i in range(layers):
        w = {k.removeprefix(f"transformer.h.{i}."): v for k, v in p.items() if k.startswith(f"transformer.h.{i}.")}
        h = rms(x, w["ln_1.weight"])
        qkv = h @ w["attn.c_attn.weight"].T + w["attn.c_attn.bias"]
        q, k, v = (t.reshape(n, heads, d) for t in qkv.split(hidden, -1))
        q, k = rotate(q), rotate(k)
        scores = torch.einsum("qhd,khd->hqk", q, k) / d**0.5
        att = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        o = torch.einsum("hqk,khd->qhd", att, v).reshape(n, hidden)
        x = x + o @ w["attn.c_proj.weight"].T
        h = rms(x, w["ln_2.weight"])
        x = x + ((h @ w["mlp.w1.weight"].T) * F.silu(h @ w["mlp.w2.weight"].T)) @ w["mlp.c_proj.weight"].T
    return rms(x, p["transformer.ln_f.weight"])


def test_qwen_tokenizer(tmp_path):
    ranks_file = tmp_path / "qwen.tiktoken"
    ranks = write_tiktoken(ranks_file)
    tok = QwenTokenizer(ranks_file)
    assert tok.eod_id == len(ranks) == EOD
    assert tok.encode("hello world") == [HELLO, WORLD]
    assert tok.encode("2024") == [ord("2"), ord("0"), ord("2"), ord("4")]  # digits one by one
    assert tok.encode("he's") == [256, ord("'"), ord("s")]  # contraction split off
    assert tok.encode("cafe\u0301") == tok.encode("caf\u00e9")  # NFC
    assert tok.encode("a<|im_start|>b<|endoftext|>") == [ord("a"), EOD + 1, ord("b"), EOD]
    assert tok.encode("<|extra_3|>") == [EOD + 3 + 3]
    assert tok.encode("x  the") == [ord("x"), ord(" "), THE]  # the last space goes with the word
    assert (
        tok.decode(tok.encode("Based on <IMG0>, hello. Output <IMG1>: ")) == "Based on <IMG0>, hello. Output <IMG1>: "
    )
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("aGVsbG8= 0\nnot-base64!! 1\n")
    with pytest.raises(BadInputError, match="bad.tiktoken:2"):
        QwenTokenizer(bad)


def test_qwen_conversion_matches_qwen_v1_math(qwen_dir):
    folder, sd = qwen_dir
    enc = QwenTextEncoder.from_qwen_v1(folder, dtype=torch.float32)
    prompts = ["hello world", "Based on <IMG0>, add the hat. Output <IMG1>: ", "42"]
    states = enc.encode(prompts)
    for prompt, s in zip(prompts, states):
        ids = enc.tokenize(prompt)
        assert ids[-1] == EOD and s.shape == (len(ids), QWEN_TINY["hidden"])
        ref = qwen_v1_reference(sd, ids, QWEN_TINY["layers"], QWEN_TINY["heads"], base=500.0, eps=1e-5)
        assert torch.allclose(s.double(), ref, atol=2e-5, rtol=1e-4), (prompt, (s.double() - ref).abs().max())
    # right padding never leaks into valid tokens: batched == one at a time
    alone = [enc.encode([p])[0] for p in prompts]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(alone, states))


def test_qwen_defaults_and_eod_handling(qwen_dir):
    folder, _ = qwen_dir
    enc = QwenTextEncoder.from_qwen_v1(folder)
    assert enc.dtype == torch.bfloat16 and enc.max_length == 150 and enc.dim == QWEN_TINY["hidden"]
    assert enc.tokenize("hello world") == [HELLO, WORLD, EOD]
    assert enc.tokenize("x" * 500) == [ord("x")] * 149 + [EOD]
    two = load_text_encoder(folder, dtype=torch.float32, eod_tokens=2, max_length=8)
    assert two.tokenize("hello world") == [HELLO, WORLD, EOD, EOD]
    assert two.tokenize("x" * 6) == [ord("x")] * 6 + [EOD, EOD]
    assert two.tokenize("x" * 7) == [ord("x")] * 7 + [EOD]  # no room for a second EOD
    assert two.tokenize("x" * 50) == [ord("x")] * 7 + [EOD]
    assert [s.shape[0] for s in two.encode(["hello world", "x" * 50])] == [4, 8]


@pytest.mark.parametrize("fmt", ["sharded", "bin"])
def test_qwen_weight_formats_and_save_roundtrip(tmp_path, qwen_dir, fmt):
    folder, _ = qwen_dir
    ref = QwenTextEncoder.from_qwen_v1(folder, dtype=torch.float32).encode(["hello world", "at the"])
    other = tmp_path / fmt
    write_qwen_v1_folder(other, fmt=fmt, seed=1)
    shutil.copyfile(folder / "config.json", other / "config.json")
    enc = load_text_encoder(other, dtype=torch.float32)
    got = enc.encode(["hello world", "at the"])
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    enc.save_pretrained(tmp_path / "ours")
    files = {p.name for p in (tmp_path / "ours").iterdir()}
    assert {"text_encoder.json", "config.json", "model.safetensors", "qwen.tiktoken"} <= files
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "qwen2"
    back = load_text_encoder(tmp_path / "ours")
    assert back.dtype == torch.float32 and back.config.eod_tokens == 1
    assert all(torch.equal(a, b) for a, b in zip(ref, back.encode(["hello world", "at the"])))


def test_qwen_bad_folders(tmp_path, qwen_dir):
    folder, sd = qwen_dir
    odd = tmp_path / "odd"
    write_qwen_v1_folder(odd)
    from safetensors.torch import load_file, save_file

    w = load_file(str(odd / "model.safetensors"))
    w["transformer.h.0.attn.mystery.weight"] = torch.zeros(2)
    save_file(w, str(odd / "model.safetensors"))
    with pytest.raises(BadInputError, match=r"unexpected keys transformer\.h\.0\.attn\.mystery\.weight"):
        load_text_encoder(odd)
    (odd / "model.safetensors").unlink()
    with pytest.raises(BadInputError, match="no weight files"):
        load_text_encoder(odd)
    cfg = json.loads((folder / "config.json").read_text())
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(BadInputError, match="'llama' is not a supported text encoder"):
        load_text_encoder(wrong)
    notok = tmp_path / "notok"
    write_qwen_v1_folder(notok)
    (notok / "qwen.tiktoken").unlink()
    with pytest.raises(BadInputError, match="no qwen.tiktoken"):
        load_text_encoder(notok)


def test_t5_encoder_and_roundtrip(tmp_path):
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    arch = dict(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    torch.manual_seed(0)
    tok = ByT5Tokenizer(model_max_length=16)
    enc = T5TextEncoder(TextEncoderConfig(kind="t5", dim=32, max_length=16, arch=arch), tok).eval()
    prompts = ["héllo", "a much longer prompt than sixteen bytes"]
    states = enc.encode(prompts)
    assert [s.shape for s in states] == [(7, 32), (16, 32)]  # bytes + </s>; truncated to max_length
    ids = torch.tensor([tok("héllo")["input_ids"]])
    with torch.no_grad():
        direct = enc.model(input_ids=ids).last_hidden_state[0]
    assert torch.allclose(states[0], direct, atol=1e-6)
    enc.save_pretrained(tmp_path / "t5")
    back = load_text_encoder(tmp_path / "t5")
    assert all(torch.equal(a, b) for a, b in zip(states, back.encode(prompts)))
    # a plain transformers folder (config.json with model_type t5 + tokenizer files) loads too
    hf = tmp_path / "hf"
    T5EncoderModel(T5Config(**arch)).save_pretrained(str(hf))
    tok.save_pretrained(str(hf))
    plain = load_text_encoder(hf, max_length=16)
    assert plain.dim == 32 and plain.encode(["abc"])[0].shape == (4, 32)


def test_byte_encoder(tmp_path):
    cfg = TextEncoderConfig(kind="byte", dim=16, max_length=12, layers=2, heads=2, seed=3)
    a, b = ByteTextEncoder(cfg).eval(), ByteTextEncoder(cfg).eval()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = ByteTextEncoder(TextEncoderConfig(kind="byte", dim=16, max_length=12, layers=2, heads=2, seed=4))
    assert not torch.equal(a.embed.weight, c.embed.weight)
    assert a.tokenize("hé") == [104, 0xC3, 0xA9, 256]
    assert a.tokenize("y" * 40) == [121] * 11 + [256]
    prompts = ["a", "a longer one", "a"]
    states = a.encode(prompts)
    assert [s.shape[0] for s in states] == [2, 12, 2]
    assert torch.equal(states[0], states[2])
    alone = a.encode(["a"])[0]
    assert torch.allclose(alone, states[0], atol=1e-6)  # padding does not leak
    assert not torch.allclose(states[1][:2], states[0])  # later tokens matter (bidirectional)
    a.save_pretrained(tmp_path / "byte")
    assert sorted(p.name for p in (tmp_path / "byte").iterdir()) == ["model.safetensors", "text_encoder.json"]
    back = load_text_encoder(tmp_path / "byte")
    assert isinstance(back, ByteTextEncoder)
    assert all(torch.equal(x, y) for x, y in zip(states, back.encode(prompts)))
    zero = ByteTextEncoder(TextEncoderConfig(kind="byte", dim=8, layers=0))
    assert zero.encode(["ok"])[0].shape == (3, 8)
    with pytest.raises(BadInputError, match="eod_tokens must be 1 or 2"):
        TextEncoderConfig(eod_tokens=3)


def test_word_buckets_hash_whole_words_case_insensitively():
    from vincie_cli.model.text import word_bucket_ids

    ids = list(b"Red red, r\xc3\xa9d 42!") + [256]
    got = word_bucket_ids(ids, 1000)
    assert got[0:3] == [got[0]] * 3 and got[4:7] == got[0:3]  # "Red" and "red": one bucket for every byte
    assert got[3] == got[7] == got[8] == got[-2] == got[-1] == 0  # space, comma, "!", EOD: outside words
    assert got[9:13] == [got[9]] * 4 and got[9] != got[0]  # "r\xc3\xa9d" stays one word, another bucket
    assert got[14:16] == [got[14]] * 2 and got[14] not in (0, got[0], got[9])
    # the bucket is part of a saved model's meaning: 32-bit FNV-1a, checked on its published test vectors
    assert word_bucket_ids(list(b"a"), 2**32)[0] - 1 == 0xE40C292C
    assert word_bucket_ids(list(b"FooBar"), 2**32)[0] - 1 == 0xBF9CF968  # = fnv1a(b"foobar")
    assert all(0 <= g <= 1000 for g in got)


def test_byte_encoder_with_word_buckets(tmp_path):
    cfg = TextEncoderConfig(kind="byte", dim=16, max_length=32, layers=1, heads=2, seed=3, word_buckets=64)
    enc = ByteTextEncoder(cfg).eval()
    assert enc.word_embed.weight.shape == (65, 16) and not enc.word_embed.weight[0].any()
    plain = ByteTextEncoder(TextEncoderConfig(kind="byte", dim=16, max_length=32, layers=1, heads=2, seed=3))
    assert "word_embed.weight" not in plain.state_dict()  # old configs load and initialise exactly as before
    a, b = enc.encode(["move the red star", "move the rod star"])
    # the words differ in one byte; with word buckets every byte of the word (and, through attention,
    # the rest of the prompt) moves, far more than the single changed byte embedding alone would
    assert (a[9] - b[9]).abs().max() > 0.1 and (a[10] - b[10]).abs().max() > 0.1
    enc.save_pretrained(tmp_path / "wb")
    back = load_text_encoder(tmp_path / "wb")
    assert back.config.word_buckets == 64
    assert all(torch.equal(x, y) for x, y in zip((a, b), back.encode(["move the red star", "move the rod star"])))
    with pytest.raises(BadInputError, match="word_buckets must be >= 0"):
        TextEncoderConfig(kind="byte", word_buckets=-1)
    with pytest.raises(BadInputError, match="is for the byte encoder only"):
        TextEncoderConfig(kind="t5", word_buckets=8)
