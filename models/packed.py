"""A pack: N copies of one registry model trained as one, each with its own parameters.

Every parameter and buffer is stacked along a leading member dimension. The forward pass takes
one batch (all members see the same data) and returns logits of shape (members, batch, classes);
the members' losses are summed, so one backward pass gives each member its own gradient.

Two ways to run the members together, chosen by measurement (bench/packing.py):

* **Fused layers** (as HFTA does) for models that are an ``nn.Sequential`` of convolutions, linear
  layers, BatchNorm, pools and activations (``simple_cnn``, ``lenet``): the members' channels sit
  side by side, so the N convolutions are one grouped convolution, the N linear layers one batched
  matmul, and BatchNorm keeps per-member statistics because its channels are per member. About
  1.3x faster than ``vmap`` on 2 CPU cores for simple_cnn.
* **torch.func.vmap over functional_call** for any other model (``resnet18``, ``fastnet``): the
  same model code, each member's parameters and BatchNorm buffers mapped over.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.Identity)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)
FUSABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.Flatten) + _ELEMENTWISE + _POOLS


def fusable(model: nn.Module) -> bool:
    """Whether the fused layers can run ``model``: a flat Sequential of layers they know."""
    return isinstance(model, nn.Sequential) and all(
        isinstance(m, FUSABLE) and not (isinstance(m, nn.Flatten) and (m.start_dim, m.end_dim) != (1, -1))
        for m in model
    )


class _PackedLinear(torch.autograd.Function):
    """N linear layers at once, ``x`` (members, batch, in) by ``weight`` (members, out, in) plus
    ``bias`` (members, out), computed as ``F.linear`` computes each one (its ``addmm``, forward and
    backward), GEMM for GEMM, so that every member is bit-identical to the solo layer:

    * forward: ``baddbmm`` with the bias as the GEMM's C, as ``addmm``. ``bmm`` followed by adding
      the bias rounds differently where the BLAS kernel accumulates the product into C in blocks of
      the reduction (on AMD EPYC with AVX-512 for ``in`` above 64: 3e-8 on simple_cnn's logits).
    * weight gradient: ``grad^T @ x``, as autograd's ``addmm`` backward does for ``F.linear``'s
      transposed weight; ``bmm``'s own backward computes ``(x^T @ grad)^T``, whose kernel orders
      the sum differently for some shapes (``out`` = 10 on that machine: 2e-9 on the gradient).
    * input gradient ``grad @ weight`` and bias gradient (the sum over the batch) as ``addmm``'s.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(grad, weight)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.bmm(grad.transpose(1, 2), x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(1)
        return grad_x, grad_weight, grad_bias


def _packed_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``_PackedLinear`` under autocast as well: the operands cast to the autocast dtype first, as
    autocast casts ``addmm``'s (outside the function, so that its backward gets them cast too)."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    return _PackedLinear.apply(x, weight, bias)


class PackedModel:
    """``members`` copies of ``model`` (its current weights in every member). ``params`` (leaves
    with gradients) and ``buffers`` hold the stacked tensors; ``member_state_dict(i)`` is member
    ``i`` as ``model.state_dict()``."""

    def __init__(self, model: nn.Module, members: int):
        self.template = model
        self.members = members
        self.params = {
            n: p.detach().unsqueeze(0).repeat((members,) + (1,) * p.dim()).requires_grad_()
            for n, p in model.named_parameters()
        }
        self.buffers = {
            n: b.detach().unsqueeze(0).repeat((members,) + (1,) * b.dim()) for n, b in model.named_buffers()
        }
        self.fused = fusable(model)
        self.training = True
        if not self.fused:
            from torch.func import functional_call, vmap

            def one(params, buffers, x):
                return functional_call(self.template, (params, buffers), (x,))

            self._mapped = vmap(one, in_dims=(0, 0, None))

    def train(self, mode: bool = True) -> PackedModel:
        self.training = mode
        self.template.train(mode)
        return self

    def eval(self) -> PackedModel:
        return self.train(False)

    def __call__(self, x: Tensor) -> Tensor:
        if self.fused:
            return self._fused_forward(x)
        return self._mapped(self.params, self.buffers, x)

    # ---- fused layers ----
    def _fused_forward(self, x: Tensor) -> Tensor:
        """Activations are ``shared`` (the input, the same for every member), ``conv``
        (batch, members*channels, H, W) or ``dense`` (members, batch, features)."""
        m, n = self.members, x.shape[0]
        layout = "shared"
        for index, layer in enumerate(self.template):
            p = {leaf: self.params[f"{index}.{leaf}"] for leaf, _ in layer.named_parameters()}
            b = {leaf: self.buffers[f"{index}.{leaf}"] for leaf, _ in layer.named_buffers()}
            if isinstance(layer, nn.Conv2d):
                weight = p["weight"].reshape((-1,) + p["weight"].shape[2:])
                bias = p["bias"].reshape(-1) if "bias" in p else None
                groups = layer.groups
                if layout == "shared" and groups > 1:
                    x, layout = x.repeat(1, m, 1, 1), "conv"
                if layout == "conv":
                    groups *= m
                x = F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, groups)
                layout = "conv"
            elif isinstance(layer, nn.Linear):
                if layout == "shared":
                    x = x.expand(m, *x.shape)
                elif layout == "conv":
                    raise ValueError("a Linear layer needs a Flatten before it")
                x = _packed_linear(x, p["weight"], p.get("bias"))
                layout = "dense"
            elif isinstance(layer, nn.Flatten):
                if layout == "conv":
                    x = x.reshape(n, m, -1).transpose(0, 1)
                elif layout == "shared":
                    x = x.reshape(n, -1).expand(m, n, -1)
                layout = "dense"
            elif isinstance(layer, nn.BatchNorm2d):
                if layout == "shared":
                    x, layout = x.repeat(1, m, 1, 1), "conv"
                if self.training and layer.track_running_stats:
                    b["num_batches_tracked"].add_(1)
                x = F.batch_norm(
                    x,
                    b["running_mean"].view(-1),
                    b["running_var"].view(-1),
                    p["weight"].reshape(-1) if "weight" in p else None,
                    p["bias"].reshape(-1) if "bias" in p else None,
                    self.training,
                    layer.momentum,
                    layer.eps,
                )
            elif layout == "dense" and isinstance(layer, _POOLS):
                raise ValueError("a pooling layer after Flatten")
            else:  # activations and pools act per channel or per element: the layout is unchanged
                x = layer(x)
        if layout != "dense":
            raise ValueError("the model must end in a Linear layer")
        return x

    # ---- members ----
    def select(self, keep: Tensor) -> None:
        """Keep only members ``keep`` (indices): the pack stops computing the others."""
        self.params = {n: p.detach()[keep].requires_grad_() for n, p in self.params.items()}
        self.buffers = {n: b[keep] for n, b in self.buffers.items()}
        self.members = len(keep)

    def member_state_dict(self, member: int) -> dict[str, Tensor]:
        """Member ``member`` as the solo model's ``state_dict()`` (keys in the same order)."""
        stacked = {**self.params, **self.buffers}
        return {name: stacked[name][member].detach().clone() for name in self.template.state_dict()}

    def l1(self) -> Tensor:
        """Each member's sum of absolute parameter values (the L1 penalty's norm)."""
        return sum(p.abs().reshape(self.members, -1).sum(1) for p in self.params.values())
