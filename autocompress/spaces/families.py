"""Built-in searchable families: an MLP, a small CNN and a MobileNetV2-like CNN.

Every family encodes a point as a short, self-contained ``arch`` dict (timm's
``_efficientnet_builder`` idea): it is what gets stored in a trial and exported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import optuna
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from torch import nn

from ._registry import ModelFamily, register_family

NonEmptyInts = list[PositiveInt]


class _Space(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------- MLP
class MLPSpace(_Space):
    depths: NonEmptyInts = Field(default=[1, 2], min_length=1)
    widths: NonEmptyInts = Field(default=[32, 64, 128], min_length=1)


class MLP(nn.Module):
    def __init__(self, hidden: list[int], *, num_classes: int, in_features: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_features
        for width in hidden:
            layers += [nn.Linear(prev, width), nn.ReLU()]
            prev = width
        self.flatten = nn.Flatten()
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x):
        return self.classifier(self.features(self.flatten(x)))


@register_family
class MLPFamily(ModelFamily):
    name = "mlp"
    space_model = MLPSpace

    def suggest_arch(self, trial: optuna.Trial) -> dict[str, Any]:
        depth = trial.suggest_categorical("arch.depth", self.space.depths)
        hidden = [
            trial.suggest_categorical(f"arch.width{i}", self.space.widths) for i in range(depth)
        ]
        return {"hidden": hidden}

    def largest_arch(self) -> dict[str, Any]:
        return {"hidden": [max(self.space.widths)] * max(self.space.depths)}

    @staticmethod
    def build(
        arch: Mapping[str, Any], *, num_classes: int, input_shape: tuple[int, ...]
    ) -> nn.Module:
        return MLP(
            list(arch["hidden"]), num_classes=num_classes, in_features=math.prod(input_shape)
        )


# ----------------------------------------------------------------------------- small CNN
class SmallCNNSpace(_Space):
    depths: NonEmptyInts = Field(default=[2, 3], min_length=1)
    widths: NonEmptyInts = Field(default=[16, 32, 48], min_length=1)
    kernel_sizes: NonEmptyInts = Field(default=[3, 5], min_length=1)
    strides: NonEmptyInts = Field(default=[1, 2, 1], min_length=1)

    @model_validator(mode="after")
    def _enough_strides(self) -> SmallCNNSpace:
        if len(self.strides) < max(self.depths):
            raise ValueError(
                f"'strides' must give one stride per conv layer up to the largest depth "
                f"({max(self.depths)}). Got {len(self.strides)} strides instead."
            )
        if any(k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"'kernel_sizes' must be odd. Got {self.kernel_sizes} instead.")
        return self


def conv_bn_act(
    c_in: int,
    c_out: int,
    *,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        act(),
    )


class SmallCNN(nn.Module):
    def __init__(
        self,
        channels: list[int],
        kernels: list[int],
        strides: list[int],
        *,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        blocks, prev = [], in_channels
        for c, k, s in zip(channels, kernels, strides, strict=True):
            blocks.append(conv_bn_act(prev, c, kernel=k, stride=s))
            prev = c
        self.features = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


@register_family
class SmallCNNFamily(ModelFamily):
    name = "small_cnn"
    space_model = SmallCNNSpace

    def suggest_arch(self, trial: optuna.Trial) -> dict[str, Any]:
        s = self.space
        depth = trial.suggest_categorical("arch.depth", s.depths)
        channels = [trial.suggest_categorical(f"arch.width{i}", s.widths) for i in range(depth)]
        kernels = [
            trial.suggest_categorical(f"arch.kernel{i}", s.kernel_sizes) for i in range(depth)
        ]
        return {"channels": channels, "kernels": kernels, "strides": list(s.strides[:depth])}

    def largest_arch(self) -> dict[str, Any]:
        s = self.space
        depth = max(s.depths)
        return {
            "channels": [max(s.widths)] * depth,
            "kernels": [max(s.kernel_sizes)] * depth,
            "strides": list(s.strides[:depth]),
        }

    @staticmethod
    def build(
        arch: Mapping[str, Any], *, num_classes: int, input_shape: tuple[int, ...]
    ) -> nn.Module:
        return SmallCNN(
            list(arch["channels"]),
            list(arch["kernels"]),
            list(arch["strides"]),
            num_classes=num_classes,
            in_channels=input_shape[0],
        )


# ----------------------------------------------------------------------------- MobileNetV2
class StageSpec(_Space):
    channels: PositiveInt
    max_depth: PositiveInt
    stride: int = Field(default=1, ge=1, le=2)


class MobileNetV2Space(_Space):
    stem_channels: PositiveInt = 16
    stem_stride: int = Field(default=1, ge=1, le=2)
    stages: list[StageSpec] = Field(
        default=[
            StageSpec(channels=16, max_depth=2, stride=1),
            StageSpec(channels=24, max_depth=2, stride=2),
            StageSpec(channels=32, max_depth=2, stride=1),
        ],
        min_length=1,
    )
    last_channels: PositiveInt = 128
    width_mults: list[float] = Field(default=[0.5, 0.75, 1.0], min_length=1)
    depths: NonEmptyInts = Field(default=[1, 2], min_length=1)
    kernel_sizes: NonEmptyInts = Field(default=[3, 5], min_length=1)
    expand_ratios: NonEmptyInts = Field(default=[3, 6], min_length=1)

    @model_validator(mode="after")
    def _check(self) -> MobileNetV2Space:
        if any(not 0 < w <= 4 for w in self.width_mults):
            raise ValueError(f"'width_mults' must lie in (0, 4]. Got {self.width_mults} instead.")
        if any(k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"'kernel_sizes' must be odd. Got {self.kernel_sizes} instead.")
        return self

    def stage_depths(self, stage: StageSpec) -> list[int]:
        """Depth choices of one stage: the global choices capped by the stage's max depth."""
        return sorted({min(d, stage.max_depth) for d in self.depths})


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without dropping more than 10% (MobileNetV2)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """MobileNetV2 block. The expansion conv is always present so that block parameter names are
    the same for every expand ratio (needed for weight inheritance from the teacher)."""

    def __init__(self, c_in: int, c_out: int, *, stride: int, expand: int, kernel: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.use_residual = stride == 1 and c_in == c_out
        self.conv = nn.Sequential(
            conv_bn_act(c_in, hidden, kernel=1, act=nn.ReLU6),
            conv_bn_act(hidden, hidden, kernel=kernel, stride=stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, arch: Mapping[str, Any], *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        width = float(arch["width_mult"])
        prev = make_divisible(arch["stem"] * width)
        self.stem = conv_bn_act(
            in_channels, prev, kernel=3, stride=arch["stem_stride"], act=nn.ReLU6
        )
        stages = []
        for stage in arch["stages"]:
            c_out = make_divisible(stage["c"] * width)
            blocks = []
            for j in range(stage["n"]):
                blocks.append(
                    InvertedResidual(
                        prev,
                        c_out,
                        stride=stage["s"] if j == 0 else 1,
                        expand=stage["t"],
                        kernel=stage["k"],
                    )
                )
                prev = c_out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = conv_bn_act(prev, arch["last"], kernel=1, act=nn.ReLU6)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(arch["last"], num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.head(self.stages(self.stem(x)))))


@register_family
class MobileNetV2Family(ModelFamily):
    name = "mobilenetv2"
    space_model = MobileNetV2Space

    def _arch(self, width: float, per_stage: list[tuple[int, int, int]]) -> dict[str, Any]:
        s = self.space
        return {
            "width_mult": width,
            "stem": s.stem_channels,
            "stem_stride": s.stem_stride,
            "last": s.last_channels,
            "stages": [
                {"c": st.channels, "s": st.stride, "n": n, "k": k, "t": t}
                for st, (n, k, t) in zip(s.stages, per_stage, strict=True)
            ],
        }

    def suggest_arch(self, trial: optuna.Trial) -> dict[str, Any]:
        s = self.space
        width = trial.suggest_categorical("arch.width_mult", s.width_mults)
        per_stage = [
            (
                trial.suggest_categorical(f"arch.stage{i}.depth", s.stage_depths(st)),
                trial.suggest_categorical(f"arch.stage{i}.kernel", s.kernel_sizes),
                trial.suggest_categorical(f"arch.stage{i}.expand", s.expand_ratios),
            )
            for i, st in enumerate(s.stages)
        ]
        return self._arch(width, per_stage)

    def largest_arch(self) -> dict[str, Any]:
        s = self.space
        per_stage = [
            (max(s.stage_depths(st)), max(s.kernel_sizes), max(s.expand_ratios)) for st in s.stages
        ]
        return self._arch(max(s.width_mults), per_stage)

    @staticmethod
    def build(
        arch: Mapping[str, Any], *, num_classes: int, input_shape: tuple[int, ...]
    ) -> nn.Module:
        return MobileNetV2(arch, num_classes=num_classes, in_channels=input_shape[0])
