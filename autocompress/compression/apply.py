"""One verb that turns a candidate's float network into its compressed version."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..spaces import Candidate, build_model
from ..spaces.groups import output_layer
from .inherit import inherit_weights_
from .lowrank import factor_names, factorize_
from .pruning import inherited_scores, prune_
from .quantization import quantize_
from .sparsity import sparsify_


def compress_(
    model: nn.Module,
    candidate: Candidate,
    *,
    input_shape: tuple[int, ...],
    teacher_state: Mapping[str, torch.Tensor] | None = None,
    pruning_importance: str = "l1",
    pruning_scores: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """In place: inherit teacher weights, physically prune, factorize, then insert fake-quant.

    Order matters: weights are inherited first so that pruning ranks channels by the teacher's
    trained weights; pruning runs on the unfactorized layers (the pruning groups are those of
    the architecture's own layers), and factorization then starts from the SVD of the pruned
    weights; both run on plain float layers before they become quant layers, and a factorized
    layer's two factors both get its bits and weight quantizer. The output layer (the
    Conv2d/Linear that runs last: the classifier) is never pruned.

    Sparse layers (``candidate.sparsities()``, both factors of a factorized one) get their mask
    last, on the fake-quant layers, one-shot by magnitude; the masked weights keep their values
    behind the mask, so that an evaluator may recompute it (gradual pruning, Taylor importance)
    from the inherited weights. ``pruning_importance``/``pruning_scores``: see ``prune_``.
    """
    if teacher_state is not None:
        inherit_weights_(model, teacher_state)
    ratios = candidate.prune_ratios()
    if ratios:
        example = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
        if pruning_importance == "taylor" and pruning_scores is not None:
            # The scores of the teacher weights each layer inherited, sliced the same way.
            pruning_scores = inherited_scores(model, ratios, pruning_scores)
        prune_(
            model,
            ratios,
            example,
            ignored=[output_layer(model, example)],
            importance=pruning_importance,
            scores=pruning_scores,
        )
    ranks = candidate.rank_ratios()
    if ranks:
        factorize_(model, ranks, candidate.factorizations())
    quantize_(
        model,
        factor_names(candidate.bits(), ranks),
        factor_names(candidate.quantizers(), ranks),
    )
    sparsities = candidate.sparsities()
    if sparsities:
        sparsify_(model, factor_names(sparsities, ranks))
    return model


def build_compressed(
    candidate: Candidate,
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    teacher_state: Mapping[str, torch.Tensor] | None = None,
    pruning_importance: str = "l1",
    pruning_scores: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    model = build_model(candidate, num_classes=num_classes, input_shape=input_shape)
    return compress_(
        model,
        candidate,
        input_shape=input_shape,
        teacher_state=teacher_state,
        pruning_importance=pruning_importance,
        pruning_scores=pruning_scores,
    )
