"""PyTorch FlatAI's Attention Residual U-Net (the PyTorch original), rebuilt as a benchmark-only
reference (needs the ``bench`` extra: torch). Never imported by ``flatai_jax``.

Architecture as PyTorch FlatAI describes it (its ``FlatAI_README.md`` diagram, ``ORIGINAL_NOTES.md``):
widths 64-128-256-512-1024, max-pool down; residual blocks of two replication-padded 3×3 convs
(no bias) with GroupNorm(32), LeakyReLU(0.2) and Dropout2d(0.2), a 1×1 conv + GroupNorm shortcut
when the width changes; additive attention gates (1×1 convs + BatchNorm) on the four skips.

- ``old``: 1 channel in, 1 out; decoder = bilinear ×2 → ResBlock(2w → w) → gate →
  ResBlock(2w → w): 40,102,765 parameters (PyTorch FlatAI's "40.1 M").
- ``latest``: 4 channels in (image, x, y, noise), 3 out (F, G, confidence); decoder = bilinear ×2
  → padded conv3×3 + BatchNorm + LeakyReLU → gate → ResBlock(2w → w): 36,271,215 ("36.3 M").
"""
from __future__ import annotations

import torch
from torch import nn

WIDTHS = (64, 128, 256, 512, 1024)
VARIANTS = {"old": (1, 1), "latest": (4, 3)}  # (channels in, channels out)


def _conv3(cin, cout):
  return [nn.ReplicationPad2d(1), nn.Conv2d(cin, cout, 3, bias=False)]


class ResBlock(nn.Module):

  def __init__(self, cin, cout, dropout=0.2):
    super().__init__()
    self.main = nn.Sequential(*_conv3(cin, cout), nn.GroupNorm(32, cout), nn.LeakyReLU(0.2),
                              nn.Dropout2d(dropout), *_conv3(cout, cout), nn.GroupNorm(32, cout))
    self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(32, cout))
                  if cin != cout else nn.Identity())
    self.act = nn.LeakyReLU(0.2)

  def forward(self, x):
    return self.act(self.main(x) + self.short(x))


class Gate(nn.Module):

  def __init__(self, c, inter):
    super().__init__()
    self.w_g = nn.Sequential(nn.Conv2d(c, inter, 1), nn.BatchNorm2d(inter))
    self.w_x = nn.Sequential(nn.Conv2d(c, inter, 1), nn.BatchNorm2d(inter))
    self.psi = nn.Sequential(nn.Conv2d(inter, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

  def forward(self, g, x):
    return x * self.psi(torch.relu(self.w_g(g) + self.w_x(x)))


class PyTorchUNet(nn.Module):

  def __init__(self, variant="old"):
    super().__init__()
    cin, cout = VARIANTS[variant]
    w = WIDTHS
    self.enc = nn.ModuleList([ResBlock(cin, w[0])] + [ResBlock(w[i], w[i + 1]) for i in range(4)])
    up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
    if variant == "old":
      self.up = nn.ModuleList([nn.Sequential(up, ResBlock(w[i + 1], w[i])) for i in range(4)])
    else:
      self.up = nn.ModuleList([nn.Sequential(up, *_conv3(w[i + 1], w[i]), nn.BatchNorm2d(w[i]),
                                             nn.LeakyReLU(0.2)) for i in range(4)])
    self.gates = nn.ModuleList([Gate(w[i], w[i] // 2) for i in range(4)])
    self.dec = nn.ModuleList([ResBlock(2 * w[i], w[i]) for i in range(4)])
    self.out = nn.Conv2d(w[0], cout, 1)

  def forward(self, x):
    skips = []
    for i, block in enumerate(self.enc):
      x = block(nn.functional.max_pool2d(x, 2) if i else x)
      skips.append(x)
    for i in reversed(range(4)):
      d = self.up[i](x)
      x = self.dec[i](torch.cat([self.gates[i](d, skips[i]), d], dim=1))
    return self.out(x)


def num_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())
