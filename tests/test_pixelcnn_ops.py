"""The PixelCNN's tanh through the sigmoid kernel is tanh to float32 rounding, with tanh's
gradient, in the gate and without gradients."""

from __future__ import annotations

import pytest
import torch

from models.pixelcnn_ops import gate, tanh


def test_tanh_through_sigmoid_is_tanh_to_float32_rounding():
    x = torch.cat([torch.linspace(-30, 30, 600_001), torch.logspace(-30, 1, 2000),
                   -torch.logspace(-30, 1, 2000), torch.tensor([0.0, float("inf"),
                                                                 float("-inf")])])
    assert (tanh(x) - torch.tanh(x)).abs().max().item() <= 2.5e-7
    assert tanh(torch.tensor([float("inf"), float("-inf"), 0.0])).tolist() == [1.0, -1.0, 0.0]
    assert torch.equal(torch.isnan(tanh(torch.tensor([float("nan")]))), torch.tensor([True]))


def test_tanh_and_gate_gradients():
    x = torch.randn(3, 8, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(tanh, (x,))
    assert torch.autograd.gradcheck(gate, (x,))
    (grad,) = torch.autograd.grad(tanh(x).sum(), x)
    torch.testing.assert_close(grad, 1 - torch.tanh(x.detach()) ** 2)


@pytest.mark.parametrize("shape,dim", [((2, 6, 3, 3), 1), ((5, 8), 1), ((4, 10, 7), 1),
                                       ((3, 4, 6), -1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gate_without_gradients_agrees_with_the_training_path(shape, dim, channels_last):
    pre = 3 * torch.randn(shape, generator=torch.Generator().manual_seed(0))
    if channels_last and pre.dim() == 4:
        pre = pre.contiguous(memory_format=torch.channels_last)
    f, g = pre.chunk(2, dim=dim)
    exact = torch.tanh(f.double()) * torch.sigmoid(g.double())
    with torch.no_grad():
        inference = gate(pre, dim)
    training = gate(pre.clone().requires_grad_(), dim)
    assert inference.shape == training.shape == f.shape
    torch.testing.assert_close(inference.double(), exact, rtol=0, atol=5e-7)
    torch.testing.assert_close(training.detach().double(), exact, rtol=0, atol=5e-7)
