"""How many members of a pack fit in the device's memory, estimated from one training step.

One member needs its parameters, their gradients (with ``pack_update=exact`` twice each: the
member's optimizer steps a copy of its own), the optimizer's state and the activations the
backward pass keeps. Both of the last are measured, not guessed: one forward pass of a one-member
pack on a real batch, with ``torch.autograd.graph.saved_tensors_hooks`` adding up what autograd
saves, and one step of the member's registry optimizer on the gradients it gives (from none for
SGD to several tensors the size of the parameters for Prodigy or Adan). A pack that would not
fit in ``HEADROOM`` of the free memory is split into sub-packs run one after another
(``split``), so it is slower, not crashed.

``pack_memory_mb`` sets the memory a pack may use (to leave room for others on a shared device);
unset, it is the free memory measured: the device's on CUDA, the host's available memory on a CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models import build_model
from models.packed import PackedModel
from optim import build_optimizer
from sweep.core.config import EXACT

HEADROOM = 0.8  # of the free memory: the allocator's fragmentation, evaluation batches, the data's copy


@dataclass(frozen=True)
class Fit:
    member_bytes: int  # one member's estimated memory
    available_bytes: int  # what the pack may use
    members: int  # how many fit (at least 1)


def available_bytes(device: torch.device, limit_mb: float | None = None, share: float = 1.0) -> int:
    """What a pack may use: ``limit_mb``, or ``share`` of the free memory (a task given half a GPU
    takes half of what is free: another pack may be sizing itself on the same device)."""
    if limit_mb is not None:
        return int(limit_mb * 2**20)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] * share)
    return int(_host_available() * share)


def _host_available() -> int:
    """The host's available memory (Linux's MemAvailable; free pages elsewhere)."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def member_bytes(cfg, data, device: torch.device) -> int:
    """One member's memory: parameters, gradients and optimizer state, and the activations one
    training step keeps for its backward pass (measured on a batch of ``cfg.batch_size``)."""
    model = build_model(cfg.model, data.in_shape, data.num_classes).to(device)
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    pack = PackedModel(model, 1)
    saved = 0

    def count(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    x = torch.as_tensor(data.train_x[: cfg.batch_size]).to(device)
    y = torch.as_tensor(data.train_y[: cfg.batch_size]).to(device).long()
    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        loss = F.cross_entropy(pack(x).flatten(0, 1), y)
    loss.backward()
    copies = 2 if cfg.pack_update == EXACT else 1  # MemberOptimizers' own parameters and gradients
    return parameters * 2 * copies + _state_bytes(cfg, model, pack) + saved


def _state_bytes(cfg, model, pack: PackedModel) -> int:
    """The optimizer state of one member: its registry optimizer over ``model``'s parameters,
    stepped once with the one-member ``pack``'s gradients (the state is made at the first step)."""
    for name, p in model.named_parameters():
        p.grad = pack.params[name].grad[0]
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), cfg.optimizer_params)
    optimizer.step()
    return sum(
        value.numel() * value.element_size()
        for entry in optimizer.state.values()
        for value in entry.values()
        if isinstance(value, torch.Tensor)
    )


def fit(cfg, data, device: torch.device, share: float = 1.0) -> Fit:
    per_member = member_bytes(cfg, data, device)
    available = available_bytes(device, cfg.pack_memory_mb, share)
    return Fit(per_member, available, max(1, int(available * HEADROOM // per_member)))


def split(members: list, size: int) -> list[list]:
    """``members`` in sub-packs of at most ``size``, as even as possible (7 by 3: 3, 2, 2)."""
    count = -(-len(members) // max(1, size))
    base, extra = divmod(len(members), count)
    out, start = [], 0
    for i in range(count):
        end = start + base + (1 if i < extra else 0)
        out.append(members[start:end])
        start = end
    return out
