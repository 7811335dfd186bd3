"""``flops`` of benchmarks/frame_flops.py: the FLOPs of a call, against counts by hand (2 FLOPs a multiply-add)."""
import torch
from torch import nn

from benchmarks.frame_flops import flops


def test_linear_and_convolution_flops_by_hand():
    torch.manual_seed(0)
    model = nn.ModuleDict({"linear": nn.Linear(8, 16), "conv": nn.Conv2d(3, 4, kernel_size=3)})
    rows, image = torch.randn(5, 8), torch.randn(1, 3, 6, 6)
    assert flops(lambda: model["linear"](rows), model) == 2 * 5 * 8 * 16
    # a 4 x 4 output of 4 channels, each a sum over 3 channels x 3 x 3 taps
    assert flops(lambda: model["conv"](image), model) == 2 * (4 * 4 * 4) * (3 * 3 * 3)
    assert all(parameter.requires_grad for parameter in model.parameters())  # restored after counting
