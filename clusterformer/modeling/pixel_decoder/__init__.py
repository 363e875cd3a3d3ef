"""Model core: pixel decoders (no detectron2 imports)."""

from .msdeformattn import DeformableTransformerEncoder, MSDeformAttnPixelDecoder

__all__ = ["DeformableTransformerEncoder", "MSDeformAttnPixelDecoder"]
