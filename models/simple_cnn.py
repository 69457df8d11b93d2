"""The classic CIFAR-10 tutorial CNN, the smallest baseline in the optimizer sweeps.

conv 32 -> maxpool 2 -> conv 64 -> maxpool 2 -> conv 64 -> flatten -> dense 64 -> dense classes,
ReLU activations, 3x3 kernels. On (3, 32, 32) with 10 classes it has exactly 122,570 parameters.
"""

from __future__ import annotations

from torch import nn

SMALL_INPUT_SIDE = 16  # below this spatial side, convs use padding=1 so the feature map survives


def _conv_out(side: int, kernel: int, padding: int) -> int:
    return side + 2 * padding - kernel + 1


def build_simple_cnn(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build the tutorial CNN for inputs of shape ``(C, H, W)``.

    Convs are unpadded as in the tutorial; for small inputs (min(H, W) < 16, e.g. the
    8x8 scikit-learn digits) they use ``padding=1`` so the spatial size stays positive.
    """
    channels, height, width = in_shape
    padding = 1 if min(height, width) < SMALL_INPUT_SIDE else 0

    def after_convs(side: int) -> int:
        side = _conv_out(side, 3, padding) // 2
        side = _conv_out(side, 3, padding) // 2
        return _conv_out(side, 3, padding)

    flat_features = 64 * after_convs(height) * after_convs(width)
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=padding),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=padding),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=padding),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(flat_features, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )
