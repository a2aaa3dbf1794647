"""Your own network as the search space: the ``model:`` section of a run config.

``model.factory`` names a callable (``"torchvision.models:resnet18"``, ``"my_nets:build"``)
that returns the ``nn.Module``, called with ``model.kwargs``. The search then chooses, on that
architecture, per-layer bits and pruning ratios (see ``space.exclude`` / ``space.overrides``)
and, with ``model.droppable_blocks``, which residual blocks to drop (a dropped block becomes an
identity). The checkpoint, when given, is the teacher: see ``search.teacher``. Its
``nn.MultiheadAttention`` layers are built as ``SplitAttention`` (see ``spaces.attention``), the
same function with projections that get bits and lose whole heads.

Inside the search the section is the model family ``"model"``, whose ``arch`` holds the factory,
its keyword arguments, the head rule and the blocks dropped: everything needed to rebuild a
candidate, so a saved or exported candidate rebuilds from its spec alone (the factory's module
must be importable there too).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from ..core.plugins import import_object, is_import_string
from ._registry import ModelFamily, register_family
from .attention import split_attention_, split_attention_keys
from .groups import output_layer

__all__ = [
    "ModelConfig",
    "UserModelFamily",
    "create_user_model",
    "droppable_blocks",
    "load_checkpoint_",
]

CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict")

Head = Literal["keep", "replace"]


class ModelConfig(BaseModel):
    """The ``model:`` section of a run config: a network of your own, optionally with its
    trained weights."""

    model_config = ConfigDict(extra="forbid")

    factory: str = Field(description="import string 'package.module:callable' of the network")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of it")
    checkpoint: Path | None = Field(
        default=None,
        description="its trained weights (a state_dict, or a dict holding one): the teacher",
    )
    checkpoint_key: str | None = Field(
        default=None,
        description="where the state_dict sits in a dict checkpoint (default: the dict itself, "
        "or its 'state_dict' / 'model' / 'model_state_dict' entry)",
    )
    classifier: str | None = Field(
        default=None,
        description="the output layer's name (default: the Conv2d/Linear that runs last)",
    )
    head: Head = Field(
        default="keep",
        description="keep: the network's output layer as built; replace: a new one for the "
        "data's class count (the teacher is then fine-tuned for teacher.epochs)",
    )
    droppable_blocks: list[str] | Literal["auto"] = Field(
        default_factory=list,
        description="glob patterns of residual blocks the search may drop, or 'auto'",
    )

    @field_validator("factory")
    @classmethod
    def _import_string(cls, factory: str) -> str:
        if not is_import_string(factory):
            raise ValueError(f"must be an import string 'package.module:callable'. Got {factory!r}")
        return factory

    @field_validator("checkpoint")
    @classmethod
    def _existing_file(cls, checkpoint: Path | None) -> Path | None:
        if checkpoint is not None and not checkpoint.expanduser().is_file():
            raise ValueError(f"must be an existing file. Got {str(checkpoint)!r}")
        return None if checkpoint is None else checkpoint.expanduser()

    def space_arch(self) -> dict[str, Any]:
        """The ``space.arch`` of the ``model`` family that this section describes."""
        return self.model_dump(
            mode="json", include={"factory", "kwargs", "classifier", "head", "droppable_blocks"}
        )


class UserModelSpace(BaseModel):
    """``space.arch`` of the ``model`` family (written from the ``model:`` section)."""

    model_config = ConfigDict(extra="forbid")

    factory: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    classifier: str | None = None
    head: Head = "keep"
    droppable_blocks: list[str] | Literal["auto"] = Field(default_factory=list)


@register_family
class UserModelFamily(ModelFamily):
    """The user's network; its only architecture knobs are the droppable blocks."""

    name = "model"
    space_model = UserModelSpace

    def __init__(self, space: BaseModel) -> None:
        super().__init__(space)
        self.blocks: list[str] = []

    def prepare(self, *, num_classes: int, input_shape: tuple[int, ...]) -> None:
        model = self.build(self.largest_arch(), num_classes=num_classes, input_shape=input_shape)
        example = torch.zeros(1, *input_shape)
        shapes = _block_shapes(model, example, factory=self.space.factory)
        output = shapes[""][1]
        # (batch, classes) for a classifier; dense tasks add dimensions: (batch, classes, H, W).
        if output is None or len(output) < 2 or output[1] != num_classes:
            raise ValueError(
                f"The 'model.factory' network ({self.space.factory}) must output "
                f"(batch, {num_classes}, ...) for the data's {num_classes} classes (outputs). "
                "Got an output of "
                f"shape {output} instead: build it for {num_classes} classes (model.kwargs) or "
                "set model.head: replace."
            )
        classifier = self.space.classifier
        if classifier is not None and not isinstance(
            dict(model.named_modules()).get(classifier), nn.Conv2d | nn.Linear
        ):
            raise ValueError(
                "The 'model.classifier' field must name a Conv2d or Linear layer of the network. "
                f"Got {classifier!r} instead."
            )
        self.blocks = droppable_blocks(model, self.space.droppable_blocks, shapes=shapes)

    def suggest_arch(self, trial: optuna.Trial) -> dict[str, Any]:
        dropped = [
            b for b in self.blocks if trial.suggest_categorical(f"arch.drop.{b}", [False, True])
        ]
        return self._arch(dropped)

    def largest_arch(self) -> dict[str, Any]:
        return self._arch([])

    def _arch(self, dropped: list[str]) -> dict[str, Any]:
        space = self.space
        return {
            "factory": space.factory,
            "kwargs": dict(space.kwargs),
            "classifier": space.classifier,
            "head": space.head,
            "dropped": dropped,
        }

    @staticmethod
    def build(
        arch: Mapping[str, Any], *, num_classes: int, input_shape: tuple[int, ...]
    ) -> nn.Module:
        model = create_user_model(arch["factory"], arch.get("kwargs", {}))
        if arch.get("head") == "replace":
            classifier = arch.get("classifier") or output_layer(model, torch.zeros(1, *input_shape))
            _replace_layer(
                model, classifier, _resized(model.get_submodule(classifier), num_classes)
            )
        for block in arch.get("dropped", ()):
            _replace_layer(model, block, nn.Identity())
        split_attention_(model)
        return model


def create_user_model(factory: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """``factory(**kwargs)``, checked: the factory must import and return an ``nn.Module``."""
    function = import_object(factory, field="model.factory")
    if not callable(function):
        raise ValueError(
            f"The 'model.factory' field must name a callable. Got {factory!r}, which is a "
            f"{type(function).__name__}."
        )
    try:
        model = function(**kwargs)
    except TypeError as err:
        raise ValueError(f"The 'model.kwargs' field does not fit {factory}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"The 'model.factory' field must name a callable returning an nn.Module. {factory} "
            f"returned a {type(model).__name__}."
        )
    return model


def load_checkpoint_(
    model: nn.Module, path: Path, *, key: str | None = None, skip: str | None = None
) -> nn.Module:
    """Load the weights of checkpoint ``path`` into ``model``, in place (``torch.load`` with
    ``weights_only=True``: tensors and plain containers only). A checkpoint is a state_dict or a
    dict holding one under ``key`` (default: one of ``CHECKPOINT_KEYS``); a ``module.`` prefix
    (DataParallel) is dropped. ``skip``: a layer whose weights are not loaded (a replaced
    head). Every other weight must match by name and shape."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, or one holding objects weights_only refuses
        raise ValueError(
            f"The 'model.checkpoint' file {str(path)!r} cannot be read as weights: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None
    state = _state_dict(loaded, key=key, path=path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = split_attention_keys(model, state)  # a checkpoint of the unsplit network
    if skip is not None:
        state = {k: v for k, v in state.items() if not k.startswith(f"{skip}.")}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not (skip and k.startswith(f"{skip}."))]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        problems = [
            f"{label} {names[:5]}" + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            for label, names in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("of another shape", mismatched),
            )
            if names
        ]
        raise ValueError(
            f"The 'model.checkpoint' file {str(path)!r} does not fit the network of "
            f"model.factory: keys {'; '.join(problems)}. (A different class count? Set "
            "model.head: replace.)"
        )
    model.load_state_dict(state, strict=False)
    return model


def _state_dict(loaded: Any, *, key: str | None, path: Path) -> dict[str, torch.Tensor]:
    def is_state(value: Any) -> bool:
        return (
            isinstance(value, Mapping)
            and bool(value)
            and all(isinstance(k, str) and torch.is_tensor(v) for k, v in value.items())
        )

    if key is not None:
        if not isinstance(loaded, Mapping) or not is_state(loaded.get(key)):
            raise ValueError(
                f"The 'model.checkpoint_key' field must name the entry of {str(path)!r} that "
                f"holds the state_dict. Got {key!r} instead."
            )
        return dict(loaded[key])
    if is_state(loaded):
        return dict(loaded)
    for candidate in CHECKPOINT_KEYS:
        if isinstance(loaded, Mapping) and is_state(loaded.get(candidate)):
            return dict(loaded[candidate])
    raise ValueError(
        f"The 'model.checkpoint' file {str(path)!r} must hold a state_dict (names -> tensors), "
        f"or a dict holding one under {list(CHECKPOINT_KEYS)} or model.checkpoint_key. Got a "
        f"{type(loaded).__name__}"
        + (f" with keys {list(loaded)[:5]}." if isinstance(loaded, Mapping) else ".")
    )


def droppable_blocks(
    model: nn.Module,
    patterns: list[str] | Literal["auto"],
    *,
    shapes: Mapping[str, tuple[tuple[int, ...] | None, tuple[int, ...] | None]],
) -> list[str]:
    """Names of the blocks the search may drop, in module order. ``"auto"``: the residual
    blocks of torchvision's ResNets (without a downsample), MobileNets (with a residual
    connection) and vision transformers (encoder blocks), and ``nn.TransformerEncoderLayer``s,
    each where its output has its input's shape. Otherwise glob patterns; each must match a
    block whose output has its input's shape (``shapes``: input and output shape of every
    module, from one forward pass)."""
    import fnmatch

    names = [name for name, _ in model.named_modules() if name]
    if patterns == "auto":
        modules = dict(model.named_modules())
        # A block that changes shape (or was called with more than its input) cannot become an
        # identity, so "auto" passes it over rather than failing.
        return [n for n in names if _residual(modules[n]) and _keeps_shape(shapes.get(n))]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise ValueError(
            "The 'model.droppable_blocks' field must hold patterns that match modules of "
            f"the network. Got {unmatched} instead, which match none."
        )
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    for name in chosen:
        if not _keeps_shape(shapes.get(name)):
            given, produced = shapes.get(name, (None, None))
            raise ValueError(
                "The 'model.droppable_blocks' field must name blocks whose output has the shape "
                f"of their input, so that dropping one leaves an identity. Got {name!r}, which "
                f"maps {given} to {produced}."
            )
    return chosen


def _keeps_shape(shape: tuple[tuple[int, ...] | None, tuple[int, ...] | None] | None) -> bool:
    return shape is not None and shape[0] is not None and shape[0] == shape[1]


def _residual(module: nn.Module) -> bool:
    """A block known to add its input to its output: torchvision's ResNet blocks without a
    downsample, its MobileNet blocks with a residual connection, its ViT encoder blocks, and
    PyTorch's transformer encoder layers."""
    kind = type(module).__name__
    if kind in ("BasicBlock", "Bottleneck"):
        return getattr(module, "downsample", True) is None
    if bool(getattr(module, "use_res_connect", False)) or kind == "EncoderBlock":
        return True
    return isinstance(module, nn.TransformerEncoderLayer)


def _block_shapes(
    model: nn.Module, example: torch.Tensor, *, factory: str
) -> dict[str, tuple[tuple[int, ...] | None, tuple[int, ...] | None]]:
    """Input and output shape of every module (the whole model under ""), from one forward
    pass; None where a module's input or output is not a single tensor."""
    shapes: dict[str, tuple[tuple[int, ...] | None, tuple[int, ...] | None]] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            given = tuple(args[0].shape) if len(args) == 1 and torch.is_tensor(args[0]) else None
            produced = tuple(output.shape) if torch.is_tensor(output) else None
            shapes.setdefault(name, (given, produced))

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules()]
    try:
        with torch.no_grad():
            model.eval()(example)
    except Exception as err:
        raise ValueError(
            f"The 'model.factory' network ({factory}) cannot run on the data's inputs of shape "
            f"{tuple(example.shape[1:])}: {type(err).__name__}: {err}"
        ) from None
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def _resized(layer: nn.Module, outputs: int) -> nn.Module:
    """A new output layer like ``layer`` with ``outputs`` outputs."""
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, outputs, bias=layer.bias is not None)
    if isinstance(layer, nn.Conv2d):
        return nn.Conv2d(
            layer.in_channels,
            outputs,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            bias=layer.bias is not None,
        )
    raise ValueError(
        "The 'model.classifier' field must name a Conv2d or Linear layer to replace. Got a "
        f"{type(layer).__name__}."
    )


def _replace_layer(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
