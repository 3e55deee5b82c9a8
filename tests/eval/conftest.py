"""Tiny random CLIP and DINO models saved like hub snapshots, so the real loading code reads them."""

from __future__ import annotations

import pytest


def _clip_vocab() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """(clip_dir, dino_dir): a 2-layer CLIP (32 px, patch 8, byte-level BPE without merges) and a 2-layer
    DINO-style ViT (32 px, patch 8), random weights, saved with save_pretrained."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, ViTConfig, ViTModel

    root = tmp_path_factory.mktemp("tiny-models")
    vocab = _clip_vocab()
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    eos = vocab["<|endoftext|>"]
    text = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=eos,
        pad_token_id=eos,
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    clip.save_pretrained(root / "clip")
    tok.save_pretrained(root / "clip")
    dino = ViTModel(
        ViTConfig(
            hidden_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=48,
            image_size=32,
            patch_size=8,
        ),
        add_pooling_layer=False,
    ).eval()
    dino.save_pretrained(root / "dino")
    return root / "clip", root / "dino"
