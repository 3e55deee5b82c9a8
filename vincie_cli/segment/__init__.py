"""Region-of-edit masks for annotated transitions: GroundingDINO + SAM2 (or the synthetic oracle), fused by rule."""
