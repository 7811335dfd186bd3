"""``torch.compile`` of the heavy parts of an HCD for inference (``Predictor(compile=...)``, ``--compile``).

Compiled: the parts that hold nearly all of a frame's arithmetic and are plain tensor code: the UNet walk
(``UNetFeatureExtractor``: down, mid and up blocks), the frozen VAE encoder and CLIP vision tower, the TCMR
stride-4 stem, the hybrid mask head and the TCMR refiner. The deformable transformer stays eager: every
MSDeformAttn layer calls a custom kernel whose dispatch is kept out of graphs (``models.ops``), so a compiled
transformer would be cut at each layer, and it holds a small share of the arithmetic (d_model 256).

Each module is compiled in place (``nn.Module.compile``): parameter names and state dicts do not change, so a
compiled model saves and loads like an eager one. Shapes are static: each clip shape (a shorter last clip, another
resolution, another number of sentences) compiles its own graph once (``compile_heavy_modules``). Under inductor
on a GPU the convolutions get the channels-last layout where inductor finds it pays
(``torch._inductor.config.layout_optimization``); SDPA (flash or memory-efficient attention) is what diffusers'
attention processors call in eager mode already.
"""
from collections.abc import Callable

from torch import nn

COMPILED_PARTS = ("backbone.unet_features", "backbone.frozen.vae.encoder", "backbone.frozen.clip_vision.vision_model",
                  "backbone.temporal_stem", "mask_head", "mask_refiner")


def compile_heavy_modules(model: nn.Module, backend: str | Callable = "inductor") -> None:
    """Compile ``COMPILED_PARTS`` of an HCD in place with the ``torch.compile`` backend ``backend`` (a name or the
    callable), for static shapes: each clip shape (frames, size, sentences) gets its own graph the first time it
    comes, and later clips of that shape reuse it. Dynamic shapes, which torch turns on at a module's first
    recompilation, made the tiny model's second shape take over 20 minutes of symbolic-shape tracing on two CPU
    cores; past torch's recompile limit (``torch._dynamo.config.recompile_limit``, 8 shapes) a module runs eager."""
    for name in COMPILED_PARTS:
        model.get_submodule(name).compile(backend=backend, dynamic=False)
