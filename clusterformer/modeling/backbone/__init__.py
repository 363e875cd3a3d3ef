"""Model core: backbone (no detectron2 imports)."""
