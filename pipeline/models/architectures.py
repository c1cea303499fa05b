"""Standard edge architectures, written from their papers' block definitions.

torchvision and timm cannot be imported beside torch 2.13 here, so these follow the papers
(and torchvision's / timm's definitions of the same blocks) by hand:

* :class:`ResNet18` — He et al. 2016: BasicBlocks (two 3x3 conv + BatchNorm, residual Add, ReLU),
  stages of 64-128-256-512 channels. ``small_input`` swaps the 7x7/2 stem and max-pool for a
  3x3/1 stem (the CIFAR variant), so 32 px inputs keep spatial detail.
* :class:`MobileNetV3Small` — Howard et al. 2019: inverted residuals with depthwise convs,
  hard-swish, squeeze-excitation gated by hard-sigmoid (torchvision's ``mobilenet_v3_small``
  block table). ``small_input`` makes the stem stride 1. BatchNorm keeps PyTorch's default
  momentum 0.1, not the reference 0.01: after the few hundred steps of a short run, statistics
  with 0.01 are still mostly their initial values and the eval-mode model guessed (10% on MNIST).
* :class:`EfficientNetB0` — Tan & Le 2019: MBConv (expand, depthwise, squeeze-excitation with
  sigmoid, project) with SiLU; stochastic depth is omitted. ``small_input`` makes the stem stride 1.
* :class:`ViTTiny` — Dosovitskiy et al. 2021, sized for small images: a patch-embedding conv,
  class token, learned positional embedding, pre-LayerNorm blocks of multi-head self-attention
  and a GELU MLP. The attention is timm's layout (one ``qkv`` Linear, a reshape to heads, and a
  ``proj`` Linear) and the module exposes ``num_heads``: the prune stage hands torch-pruning
  ``{attention.qkv: num_heads}``, so head dimensions are pruned evenly across heads. The reshape
  infers the head size, so a pruned model rebuilt from its pruning history runs unchanged.

Every constructor takes ``in_channels`` and ``num_classes`` first (the zoo passes the data's),
plus width knobs; all export with ``torch.onnx.export(..., dynamo=True)``.

The CNNs take ``zero_init_residual``: the last BatchNorm of every residual block starts at zero,
so each block starts as the identity (Goyal et al. 2017; torchvision's ResNet option). Defaults
follow short from-scratch runs on MNIST-5k at 32 px (one seed each): on for the MBConv networks
(EfficientNet-B0 at half width, 4 epochs: 95.2% validation accuracy with it, 92.6% without, and
its first epoch's model guessed at 10% without; MobileNetV3-small: 96.2% vs 95.5% test), off for
ResNet-18 as in torchvision (half width, 3 epochs: 97.3% test without it, 95.9% with it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EfficientNetB0", "MobileNetV3Small", "ResNet18", "ViTTiny"]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10% below ``value``
    (the rule of the MobileNet and EfficientNet reference code)."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _conv_bn_act(
    c_in: int,
    c_out: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
    bn_eps: float = 1e-5,
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=bn_eps),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def _init_conv_bn(module: nn.Module, zero_init_residual: bool) -> None:
    """Kaiming (fan-out) convs, unit BatchNorm: the reference initialisation of these CNNs; with
    ``zero_init_residual``, the last BatchNorm of each residual branch starts at zero."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in module.modules():
            last_bn = getattr(m, "last_bn", None)
            if getattr(m, "use_residual", False) and isinstance(last_bn, nn.BatchNorm2d):
                nn.init.zeros_(last_bn.weight)


# ---------------------------------------------------------------- ResNet-18


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN) shortcut: ``relu(f(x) + x)``."""

    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.use_residual = True

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18: [2, 2, 2, 2] BasicBlocks at 64·w, 128·w, 256·w, 512·w channels.

    ``small_input=True`` (default): 3x3 stride-1 stem without max-pool, for 8–64 px images;
    ``False``: the ImageNet stem (7x7 stride 2 + 3x3 max-pool).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        small_input: bool = True,
        dropout: float = 0.0,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        widths = [max(8, round(c * width_mult)) for c in (64, 128, 256, 512)]
        if small_input:
            self.stem = _conv_bn_act(in_channels, widths[0], 3)
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 7, 2, padding=3, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, padding=1),
            )
        layers = []
        c_in = widths[0]
        for i, c_out in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out)))
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)
        _init_conv_bn(self, zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.dropout(self.pool(x).flatten(1)))


# ---------------------------------------------------------------- squeeze-excitation


class SqueezeExcitation(nn.Module):
    """Hu et al. 2018: ``x * gate(fc2(act(fc1(avgpool(x)))))`` with 1x1 convs as the FC layers."""

    def __init__(
        self, channels: int, squeeze: int, act: type[nn.Module] = nn.ReLU, gate: type[nn.Module] = nn.Hardsigmoid
    ):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


# ---------------------------------------------------------------- MobileNetV3-small


class _ExpandDepthwiseProject(nn.Module):
    """The block MobileNetV3 and EfficientNet share: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1
    project, plus the input when the shapes match. ``last_bn`` is what zero-init-residual zeroes.
    ``se`` makes the squeeze-excitation module, if any."""

    def __init__(
        self,
        c_in: int,
        expanded: int,
        c_out: int,
        kernel: int,
        stride: int,
        act: type[nn.Module],
        se: Callable[[], nn.Module] | None,
        **bn: float,
    ):
        super().__init__()
        self.use_residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(_conv_bn_act(c_in, expanded, 1, act=act, **bn))
        layers.append(_conv_bn_act(expanded, expanded, kernel, stride, groups=expanded, act=act, **bn))
        if se is not None:  # made here, in layer order, so seeded initialisation is unchanged
            layers.append(se())
        layers.append(_conv_bn_act(expanded, c_out, 1, act=None, **bn))
        self.block = nn.Sequential(*layers)

    @property
    def last_bn(self) -> nn.Module:
        return self.block[-1][1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class InvertedResidual(_ExpandDepthwiseProject):
    """MobileNetV3 bneck: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project (+ x when shapes match)."""

    def __init__(self, c_in: int, kernel: int, expanded: int, c_out: int, use_se: bool, act: type[nn.Module], stride):
        squeeze = make_divisible(expanded // 4)
        se = (lambda: SqueezeExcitation(expanded, squeeze, nn.ReLU, nn.Hardsigmoid)) if use_se else None
        super().__init__(c_in, expanded, c_out, kernel, stride, act, se, bn_eps=1e-3)


# in, kernel, expanded, out, squeeze-excitation, activation (RE: ReLU, HS: hard-swish), stride
_MOBILENET_V3_SMALL = [
    (16, 3, 16, 16, True, "RE", 2),
    (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1),
    (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2),
    (96, 5, 576, 96, True, "HS", 1),
    (96, 5, 576, 96, True, "HS", 1),
]


class MobileNetV3Small(nn.Module):
    """MobileNetV3-small (torchvision's block table), channels scaled by ``width_mult``.

    ``small_input=True`` (default) makes the stem stride 1 instead of 2, so a 32 px image ends at
    2x2 instead of 1x1 before pooling. The classifier is Linear -> hard-swish -> Dropout -> Linear.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        small_input: bool = True,
        dropout: float = 0.2,
        last_channel: int = 1024,
        zero_init_residual: bool = True,
    ):
        super().__init__()
        bn = {"bn_eps": 1e-3}
        acts: dict[str, type[nn.Module]] = {"RE": nn.ReLU, "HS": nn.Hardswish}

        def ch(c: int) -> int:
            return make_divisible(c * width_mult)

        stem_out = ch(16)
        layers: list[nn.Module] = [
            _conv_bn_act(in_channels, stem_out, 3, 1 if small_input else 2, act=nn.Hardswish, **bn)
        ]
        for c_in, kernel, expanded, c_out, use_se, act, stride in _MOBILENET_V3_SMALL:
            layers.append(InvertedResidual(ch(c_in), kernel, ch(expanded), ch(c_out), use_se, acts[act], stride))
        last_conv = 6 * ch(96)
        layers.append(_conv_bn_act(ch(96), last_conv, 1, act=nn.Hardswish, **bn))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        hidden = make_divisible(last_channel * width_mult) if width_mult > 1 else last_channel
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, hidden), nn.Hardswish(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )
        _init_conv_bn(self, zero_init_residual)
        for m in self.classifier.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


# ---------------------------------------------------------------- EfficientNet-B0


class MBConv(_ExpandDepthwiseProject):
    """EfficientNet MBConv: [1x1 expand] -> kxk depthwise -> SE (sigmoid, squeeze = in/4) -> 1x1 project."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand_ratio: int):
        expanded = make_divisible(c_in * expand_ratio)
        se = lambda: SqueezeExcitation(expanded, max(1, c_in // 4), nn.SiLU, nn.Sigmoid)  # noqa: E731
        super().__init__(c_in, expanded, c_out, kernel, stride, nn.SiLU, se)


# expand ratio, kernel, stride, in, out, layers
_EFFICIENTNET_B0 = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]


class EfficientNetB0(nn.Module):
    """EfficientNet-B0 (the paper's Table 1), channels scaled by ``width_mult`` and block repeats
    by ``depth_mult`` (B0: both 1.0). ``small_input=True`` (default) makes the stem stride 1."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        small_input: bool = True,
        dropout: float = 0.2,
        zero_init_residual: bool = True,
    ):
        super().__init__()

        def ch(c: int) -> int:
            return make_divisible(c * width_mult)

        layers: list[nn.Module] = [_conv_bn_act(in_channels, ch(32), 3, 1 if small_input else 2, act=nn.SiLU)]
        for expand, kernel, stride, c_in, c_out, repeats in _EFFICIENTNET_B0:
            blocks = []
            for i in range(math.ceil(repeats * depth_mult)):
                c_block, s_block = (ch(c_in), stride) if i == 0 else (ch(c_out), 1)
                blocks.append(MBConv(c_block, ch(c_out), kernel, s_block, expand))
            layers.append(nn.Sequential(*blocks))
        last_conv = 4 * ch(320)
        layers.append(_conv_bn_act(ch(320), last_conv, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last_conv, num_classes)
        _init_conv_bn(self, zero_init_residual)
        bound = 1.0 / math.sqrt(num_classes)
        nn.init.uniform_(self.classifier.weight, -bound, bound)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(self.features(x)).flatten(1)))


# ---------------------------------------------------------------- ViT-tiny


class Attention(nn.Module):
    """Multi-head self-attention in timm's layout: ``qkv`` Linear -> heads -> SDPA -> ``proj``.

    The head size is inferred from the ``qkv`` output in ``forward`` (``reshape(..., -1)``), so
    pruning head dimensions evenly across heads (torch-pruning with ``num_heads``) needs no
    attribute updates; the softmax scale stays that of the original head size.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        x = x.transpose(1, 2).reshape(b, n, -1)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTTiny(nn.Module):
    """A small Vision Transformer: ``image_size``/``patch_size`` patches embedded by a strided conv,
    a class token (``pool="cls"``) or mean pooling (``pool="mean"``), a learned positional
    embedding, ``depth`` pre-LN blocks, a final LayerNorm and a Linear head.

    The positional embedding fixes the input size: the data must be ``image_size`` square.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        image_size: int = 32,
        patch_size: int = 4,
        dim: int = 192,
        depth: int = 6,
        num_heads: int = 3,
        mlp_ratio: float = 2.0,
        pool: str = "cls",
        dropout: float = 0.0,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', not {pool!r}")
        self.image_size = image_size
        self.pool = pool
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + (pool == "cls"), dim))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, num_heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated-normal(0.02) embeddings as in ViT; Linear and conv layers keep PyTorch's default
        initialisation, which trained much faster in short runs here than ViT's truncated-normal(0.02)
        Linear weights (dim 96, depth 4, 3 epochs on MNIST-5k at 32 px: 66-68% vs 48% validation accuracy)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"vit_tiny was built for {self.image_size}x{self.image_size} inputs, got "
                f"{x.shape[-2]}x{x.shape[-1]} (set model.kwargs.image_size or data.image_size)"
            )
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.blocks(self.pos_drop(x + self.pos_embed)))
        x = x[:, 0] if self.cls_token is not None else x.mean(dim=1)
        return self.head(self.head_drop(x))
