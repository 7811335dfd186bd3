"""Multi-scale deformable attention (Deformable DETR) with compiled CUDA / C++ CPU kernels and a PyTorch fallback.

- :func:`ms_deform_attn`: the operator; dispatches to the fastest available backend (see
  :mod:`models.ops.ms_deform_attn_function`; ``HCD_MSDA_BACKEND=auto|pytorch|cpp`` forces one).
- :class:`MSDeformAttn`: the attention layer (projections, offsets, softmax) around it.
- :func:`ms_deform_attn_pytorch` / :func:`ms_deform_attn_grid_sample`: the pure-PyTorch formulations.
"""
from models.ops.ms_deform_attn_function import ms_deform_attn
from models.ops.ms_deform_attn_module import MSDeformAttn
from models.ops.pytorch_impl import ms_deform_attn_grid_sample, ms_deform_attn_pytorch

__all__ = ["ms_deform_attn", "MSDeformAttn", "ms_deform_attn_pytorch", "ms_deform_attn_grid_sample"]
