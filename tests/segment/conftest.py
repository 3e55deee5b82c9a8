"""Tiny random-weight GroundingDINO + SAM2 checkpoints written to disk once per session (no download)."""

from __future__ import annotations

import json

import pytest

WORDS = "a the red blue green yellow small large big circle square triangle ball box cat dog star object 0 1 2 3"


def _tokenizer():
    from transformers import BertTokenizer

    special = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}
    for j, w in enumerate(WORDS.split()):
        special[1030 + j] = w
    vocab = {special.get(i, f"[unused{i}]"): i for i in range(1100)}
    return BertTokenizer(vocab=vocab, model_max_length=64)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """(detector dir, segmenter dir) of tiny random models saved with save_pretrained (safetensors)."""
    import torch
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection, Sam2Config, Sam2Model
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    root = tmp_path_factory.mktemp("tiny-gsam")
    torch.manual_seed(0)
    det_cfg = GroundingDinoConfig(
        backbone_config=dict(
            model_type="swin",
            embed_dim=16,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 2, 2],
            window_size=4,
            image_size=64,
            out_features=["stage2", "stage3", "stage4"],
            out_indices=[2, 3, 4],
        ),
        text_config=dict(
            model_type="bert",
            vocab_size=1100,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=10,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=16,
    )
    det_dir = root / "gdino"
    GroundingDinoForObjectDetection(det_cfg).save_pretrained(det_dir)
    _tokenizer().save_pretrained(det_dir)
    GroundingDinoImageProcessorPil(size={"shortest_edge": 128, "longest_edge": 192}).save_pretrained(det_dir)

    S = 128
    sam_cfg = Sam2Config(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam2_hiera_det_model",
                hidden_size=16,
                image_size=[S, S],
                blocks_per_stage=[1, 1, 2, 1],
                embed_dim_per_stage=[16, 32, 64, 128],
                num_attention_heads_per_stage=[1, 1, 2, 2],
                window_size_per_stage=[4, 4, 4, 2],
                global_attention_blocks=[3],
                window_positional_embedding_background_size=[4, 4],
            ),
            backbone_channel_list=[128, 64, 32, 16],
            backbone_feature_sizes=[[S // 4] * 2, [S // 8] * 2, [S // 16] * 2],
            fpn_hidden_size=32,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=S, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    sam_dir = root / "sam2"
    Sam2Model(sam_cfg).save_pretrained(sam_dir)
    (sam_dir / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "Sam2ImageProcessor",
                "size": {"height": S, "width": S},
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
            }
        )
    )
    return str(det_dir), str(sam_dir)


@pytest.fixture(scope="session")
def tiny_backend(tiny_models):
    from vincie_cli.segment.grounded_sam2 import GroundedSam2Backend, GroundedSam2Options

    det, sam = tiny_models
    return GroundedSam2Backend(
        GroundedSam2Options(detector=det, segmenter=sam, batch_size=4, box_threshold=0.3, text_threshold=0.2)
    )
