"""A tiny random-weight Qwen2.5-VL saved as a local model folder (config, safetensors, tokenizer, preprocessor)."""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]  # fmt: skip


def build_tiny_qwen_vl(folder: Path, seed: int = 0) -> Path:
    import torch
    import transformers as T
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    # a byte-level BPE without merges: every byte is a token, plus Qwen's special tokens
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    tok = T.Qwen2Tokenizer(
        vocab=vocab, merges=[], model_max_length=8192, unk_token=None, bos_token=None, eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )  # fmt: skip
    tok.add_special_tokens({"additional_special_tokens": SPECIALS})
    ids = dict(zip(SPECIALS, tok.convert_tokens_to_ids(SPECIALS)))
    cfg = T.Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=8192,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    torch.manual_seed(seed)
    model = T.Qwen2_5_VLForConditionalGeneration(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    T.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112).save_pretrained(folder)
    return folder
