"""Small NMAI networks that MONAI does not provide as such (built only through ``networks.build_network``)."""

from __future__ import annotations

import torch
from torch import nn


def _conv(spatial_dims: int):
    return nn.Conv3d if spatial_dims == 3 else nn.Conv2d


class _ResBlock(nn.Module):
    def __init__(self, conv, features: int, kernel_size: int):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = conv(features, features, kernel_size, padding=pad)
        self.conv2 = conv(features, features, kernel_size, padding=pad)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(x + self.conv2(self.act(self.conv1(x))))


class ResidualCNN(nn.Module):
    """Head conv, ``blocks`` residual blocks, tail conv; optional global skip (learns the residual).

    With ``global_skip`` the output adds the input (``out_channels == in_channels``) or its centre channel
    (``out_channels == 1``, the centre slice of a 2.5-D stack). ``kernel_size=1`` gives a voxel-wise network.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, features: int = 32,
                 blocks: int = 4, kernel_size: int = 3, global_skip: bool = True):
        super().__init__()
        conv = _conv(spatial_dims)
        pad = kernel_size // 2
        self.head = conv(in_channels, features, kernel_size, padding=pad)
        self.blocks = nn.Sequential(*[_ResBlock(conv, features, kernel_size) for _ in range(blocks)])
        self.tail = conv(features, out_channels, kernel_size, padding=pad)
        self.act = nn.ReLU()
        self.global_skip = global_skip
        self.centre = in_channels // 2 if out_channels == 1 and in_channels > 1 else None

    def forward(self, x):
        y = self.tail(self.blocks(self.act(self.head(x))))
        if self.global_skip:
            y = y + (x[:, self.centre:self.centre + 1] if self.centre is not None else x)
        return y


class ResidualUNet(nn.Module):
    """A MONAI ``UNet`` (residual units) that learns the residual: output = centre input channel + UNet(x).

    For 2.5-D denoising the input is a stack of neighbouring slices and the output the centre slice, so the
    network only has to predict the noise (DnCNN-style global skip); ``out_channels`` must be 1.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, channels, strides,
                 num_res_units: int = 2, act="PRELU", norm=None):
        super().__init__()
        from monai.networks.nets import UNet

        self.unet = UNet(spatial_dims, in_channels, out_channels, channels=channels, strides=strides,
                         num_res_units=num_res_units, act=act, norm=norm)
        self.centre = in_channels // 2

    def forward(self, x):
        return x[:, self.centre:self.centre + 1] + self.unet(x)


class SmallCNNClassifier(nn.Module):
    """Strided conv blocks (conv, instance norm, ReLU), global average pooling, dropout, linear logits."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, features=(16, 32, 64),
                 dropout: float = 0.0):
        super().__init__()
        conv = _conv(spatial_dims)
        norm = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
        layers, channels = [], in_channels
        for f in features:
            layers += [conv(channels, f, 3, stride=2, padding=1), norm(f, affine=True), nn.ReLU()]
            channels = f
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool3d(1) if spatial_dims == 3 else nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, out_channels)

    def forward(self, x):
        return self.fc(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))
