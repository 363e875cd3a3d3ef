"""Model core: pixel_decoder (no detectron2 imports)."""
