"""The uncompressed teacher: trained once per run folder (or loaded from the user's checkpoint),
then reused and distilled from."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from torch import nn

from ..compression.serialization import SPEC_FILE, load_model, read_spec, save_model
from ..config import RunConfig
from ..core.errors import AutocompressError, DamagedFileError
from ..data import DataBundle, make_loaders
from ..evaluators import CandidateError
from ..evaluators.train import train_epochs
from ..spaces import JointSearchSpace, build_model
from ..spaces.groups import output_layer
from ..spaces.user_model import load_checkpoint_

logger = logging.getLogger(__name__)


def teacher_fingerprint(config: RunConfig) -> str:
    """What the teacher depends on: changing the candidates' fine-tuning must not retrain it.
    A checkpoint counts by its bytes, so a file replaced under the same name is seen."""
    relevant = config.model_dump(mode="json", include={"seed", "data", "space", "teacher"})
    relevant["space"] = {k: relevant["space"][k] for k in ("family", "arch")}
    if config.task != "classification":  # classification teachers predate tasks
        relevant["task"] = config.task
    if config.model is not None and config.model.checkpoint is not None:
        with config.model.checkpoint.open("rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        relevant["checkpoint"] = {"sha256": digest, "key": config.model.checkpoint_key}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def get_teacher(
    config: RunConfig,
    *,
    space: JointSearchSpace,
    data: DataBundle,
    directory: Path,
    device: torch.device,
) -> tuple[nn.Module, dict]:
    """Load the teacher cached in ``directory`` or train it; returns (model, its metrics)."""
    candidate = space.teacher()
    if (directory / SPEC_FILE).is_file():
        try:
            spec = read_spec(directory)
            if spec["metrics"].get("fingerprint") == teacher_fingerprint(config):
                model, spec = load_model(directory, map_location=device)
                logger.info("Teacher loaded from %s.", directory)
                return model.to(device).eval(), spec["metrics"]
            logger.warning(
                "Cached teacher in %s does not match this config: retraining.", directory
            )
        except DamagedFileError as err:  # a cache: train it again rather than give up
            logger.warning("%s Training the teacher again.", err)

    cfg = config.teacher
    task = config.make_task()
    # Initialisation is seeded without touching the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(candidate, num_classes=data.num_classes, input_shape=data.input_shape)
    train_loader, val_loader = make_loaders(
        data,
        batch_size=cfg.batch_size or config.data.batch_size,
        num_workers=config.data.num_workers,
        seed=config.seed,
    )
    checkpoint = config.model.checkpoint if config.model is not None else None
    if checkpoint is not None:
        # The checkpoint is the teacher; with a replaced head, that head still has to learn.
        replaced = config.model.head == "replace"
        head = None
        if replaced:  # the new head's weights are not in the checkpoint
            example = torch.zeros(1, *data.input_shape)
            head = config.model.classifier or output_layer(model, example)
        load_checkpoint_(model, checkpoint, key=config.model.checkpoint_key, skip=head)
        logger.info("Teacher loaded from %s.", checkpoint)
        if not replaced:
            cfg = cfg.model_copy(update={"epochs": 0})
    if cfg.epochs:
        what = "the checkpoint with its new head" if checkpoint is not None else "the teacher"
        logger.info("Training %s (%d epoch(s)) into %s ...", what, cfg.epochs, directory)
    try:
        train_epochs(
            model,
            train_loader,
            epochs=cfg.epochs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            device=device,
            task=task,
        )
    except CandidateError as err:
        raise AutocompressError(
            f"The teacher (the space's largest architecture, in fp32) could not be trained: "
            f"{err}. Lower teacher.lr (now {cfg.lr}) or check that the data are finite."
        ) from None
    scores = task.evaluate(model, val_loader, device=device)
    loss = scores.pop("loss")
    logger.info("Teacher %s %.4g.", task.primary, scores[task.primary])
    metrics = {
        **scores,
        "val_loss": loss,
        "params": sum(p.numel() for p in model.parameters()),
        "fingerprint": teacher_fingerprint(config),
    }
    save_model(
        directory,
        model,
        candidate=candidate,
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        metrics=metrics,
    )
    return model.eval(), metrics
