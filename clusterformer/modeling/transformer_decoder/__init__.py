"""Model core: transformer_decoder (no detectron2 imports)."""
