"""HCD's visual backbone: noise-free ModelScope T2V UNet features with a per-frame CLIP condition."""
from .visual_backbone import BackboneOutput, FrameEncoding, VisualBackbone, build_backbone

__all__ = ["BackboneOutput", "FrameEncoding", "VisualBackbone", "build_backbone"]
