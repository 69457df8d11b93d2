"""Tests for the model registry: every registered CNN builds, runs, trains and is reproducible."""

from __future__ import annotations

import pytest
import torch

from models import MODELS, ModelSpec, build_model

IN_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
NUM_CLASSES = 10
BATCH_SIZE = 4


def _param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_is_keyed_by_spec_name():
    for name, spec in MODELS.items():
        assert isinstance(spec, ModelSpec)
        assert spec.name == name
        assert spec.description


@pytest.mark.parametrize("in_shape", IN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_eval_forward_returns_logits(name, in_shape):
    torch.manual_seed(0)
    model = build_model(name, in_shape, NUM_CLASSES).eval()
    with torch.no_grad():
        logits = model(torch.randn(BATCH_SIZE, *in_shape))
    assert logits.shape == (BATCH_SIZE, NUM_CLASSES)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("in_shape", IN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_train_backward_reaches_every_parameter(name, in_shape):
    torch.manual_seed(0)
    model = build_model(name, in_shape, NUM_CLASSES).train()
    inputs = torch.randn(BATCH_SIZE, *in_shape)
    targets = torch.randint(0, NUM_CLASSES, (BATCH_SIZE,))
    logits = model(inputs)
    assert logits.shape == (BATCH_SIZE, NUM_CLASSES)
    torch.nn.functional.cross_entropy(logits, targets).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{name}: no gradient for {param_name}"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient for {param_name}"
        assert param.grad.abs().sum() > 0, f"{name}: zero gradient for {param_name}"


def test_simple_cnn_matches_tutorial_parameter_count():
    model = build_model("simple_cnn", (3, 32, 32), NUM_CLASSES)
    assert _param_count(model) == 122_570


def test_fastnet_has_about_two_million_parameters():
    model = build_model("fastnet", (3, 32, 32), NUM_CLASSES)
    assert 1_500_000 <= _param_count(model) <= 2_500_000


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(KeyError) as excinfo:
        build_model("no_such_net", (3, 32, 32), NUM_CLASSES)
    message = str(excinfo.value)
    assert "'no_such_net'" in message
    assert ", ".join(sorted(MODELS)) in message


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_seed_gives_identical_parameters(name):
    def build_seeded(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build_model(name, (3, 32, 32), NUM_CLASSES).state_dict()

    first, second = build_seeded(123), build_seeded(123)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), f"{name}: {key} differs"
    other = build_seeded(456)
    assert any(not torch.equal(first[key], other[key]) for key in first)
