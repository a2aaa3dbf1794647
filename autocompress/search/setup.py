"""What every trial of a run needs, built once per process: the data, the space, the hardware
profile, the teacher and the evaluator. The single-process search, each ``autocompress worker``
and each Ray worker (and the Ray driver, which prices trials) build one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import optuna
import torch
from torch import nn

from ..compression.sparsity import taylor_scores
from ..config import RunConfig
from ..core.errors import ConfigError
from ..core.files import file_lock
from ..core.rundir import RunDir
from ..data import DataBundle, load_data, make_loaders
from ..evaluators import (
    Evaluator,
    EvaluatorContext,
    TrainEvaluator,
    create_evaluator,
    resolve_device,
)
from ..evaluators.early_stopping import (
    EarlyStoppingTrainEvaluator,
    InMemoryRungStore,
    OptunaRungStore,
    RungTable,
    rung_schedule,
)
from ..hardware_profiles import HardwareProfile, create_hardware_profile
from ..spaces import JointSearchSpace
from ..tasks import to_device
from .teacher import get_teacher

# An evaluator, or a factory that builds one from what the setup knows (like the registered
# factories of ``evaluator: {name: ...}``).
EvaluatorSpec = Evaluator | Callable[[EvaluatorContext], Evaluator]


@dataclass(frozen=True)
class SearchSetup:
    """Everything a trial needs, built once per process (see the module docstring)."""

    config: RunConfig
    run_dir: RunDir
    data: DataBundle
    space: JointSearchSpace
    profile: HardwareProfile
    evaluator: Evaluator
    teacher_state: dict = field(repr=False)
    teacher_metrics: dict
    # space.pruning_importance: taylor: |w*g| of each teacher weight, keyed like teacher_state
    pruning_scores: dict | None = field(default=None, repr=False)


def make_hardware_profile(config: RunConfig) -> HardwareProfile:
    """The profile of the ``hardware`` section; a bad option is a :class:`ConfigError`."""
    hw = config.hardware
    try:
        if hw.profile == "analytic":
            profile = create_hardware_profile("analytic", device=hw.device, **hw.options)
        else:
            profile = create_hardware_profile(hw.profile, **hw.options)
    except (TypeError, ValueError, FileNotFoundError) as err:
        raise ConfigError(f"hardware: {err}") from None
    if config.wants_energy():
        problem = _energy_problem(profile)
        if problem is not None:
            raise ConfigError(
                f"The run asks for energy (energy_mj in 'search.objectives' or "
                f"'hardware.budget.max_energy_mj'), but {problem}. Drop energy_mj from "
                "search.objectives (and the energy budget), or price with a profile that "
                "reports energy: analytic, measured or remote with 'hardware.options.power_w', "
                "or a LUT imported with an energy_mj column."
            )
    return profile


def _energy_problem(profile: HardwareProfile) -> str | None:
    """Why ``profile`` cannot price energy (every candidate's would be NaN), or None."""
    from ..hardware_profiles import LearnedProfile, LUTProfile

    if isinstance(profile, LearnedProfile):
        return "the learned profile's predictor holds latency only"
    if isinstance(profile, LUTProfile):
        missing = sum(e.energy_mj is None for e in profile.lut.entries.values())
        if missing:
            return f"the LUT has no energy for {missing} of its {len(profile.lut)} layers"
    return None


def evaluator_context(
    config: RunConfig,
    *,
    data: DataBundle,
    space: JointSearchSpace,
    device: torch.device,
    teacher: nn.Module | None,
    run_dir: RunDir | None,
    teacher_metrics: Mapping[str, float] | None = None,
) -> EvaluatorContext:
    """What the evaluator of ``config`` is built from (``train.batch_size`` resolved)."""
    batch_size = config.train.batch_size or config.data.batch_size
    return EvaluatorContext(
        data=data,
        space=space,
        train=config.train.model_copy(update={"batch_size": batch_size}),
        device=device,
        teacher=teacher,
        num_workers=config.data.num_workers,
        seed=config.seed,
        run_dir=run_dir,
        task=config.make_task(),
        teacher_metrics=teacher_metrics,
    )


def make_evaluator(
    config: RunConfig, context: EvaluatorContext, *, study: optuna.Study | None = None
) -> Evaluator:
    """The evaluator of ``config.evaluator`` (a :class:`ConfigError` for bad options). The
    ``train`` evaluator gets multi-objective early stopping when ``search.early_stopping`` is on,
    the task's primary metric (accuracy) is an objective and ``train.epochs`` leaves room for a
    rung (so does any evaluator whose ``with_early_stopping`` answers); its rung records live in
    ``study`` (shared by every process on its storage, kept across
    resumes), else in this process's memory."""
    try:
        evaluator = create_evaluator(
            config.evaluator.name, context=context, **config.evaluator.options
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"evaluator: {err}") from None
    stopping = config.search.early_stopping
    rungs = rung_schedule(
        max_epochs=max(config.train.epochs, 1), min_epochs=stopping.min_epochs, eta=stopping.eta
    )
    if stopping.ptq_rung:  # rung 0: the post-training quantized candidate, before training
        rungs = (0, *rungs)
    score = config.score_objective()  # what rungs compare
    if not (stopping.enabled and rungs and score):
        return evaluator
    table = RungTable(
        rungs=rungs,
        eta=stopping.eta,
        min_dominators=stopping.min_dominators,
        min_records=stopping.min_records,
        store=InMemoryRungStore() if study is None else OptunaRungStore(study),
    )
    cost_names = [o.name for o in config.objectives() if o.name != score.name]
    if type(evaluator) is TrainEvaluator:
        return EarlyStoppingTrainEvaluator.from_context(context, table=table, cost_names=cost_names)
    return evaluator.with_early_stopping(table, cost_names=cost_names) or evaluator


def prepare_setup(
    config: RunConfig,
    run_dir: Path | RunDir,
    *,
    study: optuna.Study | None = None,
    evaluator: EvaluatorSpec | None = None,
    profile: HardwareProfile | None = None,
) -> SearchSetup:
    """Load the data, build the space and the hardware profile, train or load the teacher and
    build the evaluator. ``study``: the run's study, where early stopping keeps its rung records
    (see :func:`make_evaluator`). ``evaluator`` / ``profile``: use these instead of the ones the
    config describes (``evaluator`` may be a factory taking an :class:`EvaluatorContext`)."""
    run = RunDir(run_dir)
    device = resolve_device(config.train.device)
    data = load_data(config.data, seed=config.seed)
    space = JointSearchSpace(
        config.space, num_classes=data.num_classes, input_shape=data.input_shape
    )
    profile = profile if profile is not None else make_hardware_profile(config)
    # Processes sharing the run folder train the teacher (and whatever the evaluator trains once,
    # e.g. a supernet) once: the first one takes the lock and trains, the others wait for the
    # lock and then load the cached result.
    with file_lock(run.teacher_lock, waiting="Waiting for another process to train the teacher..."):
        teacher, teacher_metrics = get_teacher(
            config, space=space, data=data, directory=run.teacher_dir, device=device
        )
        context = evaluator_context(
            config,
            data=data,
            space=space,
            device=device,
            teacher=teacher,
            run_dir=run,
            teacher_metrics=teacher_metrics,
        )
        if evaluator is None:
            evaluator = make_evaluator(config, context, study=study)
        elif not isinstance(evaluator, Evaluator):
            evaluator = evaluator(context)
    pruning_scores = None
    if config.space.pruning_importance == "taylor":
        pruning_scores = teacher_taylor_scores(config, teacher, data=data, device=device)
    return SearchSetup(
        config=config,
        run_dir=run,
        data=data,
        space=space,
        profile=profile,
        evaluator=evaluator,
        teacher_state=teacher.state_dict(),
        teacher_metrics=teacher_metrics,
        pruning_scores=pruning_scores,
    )


TAYLOR_BATCHES = 4  # training batches the Taylor channel importance averages over


def teacher_taylor_scores(
    config: RunConfig, teacher: nn.Module, *, data: DataBundle, device: torch.device
) -> dict[str, torch.Tensor]:
    """First-order Taylor importance ``|w * g|`` of every Conv2d/Linear weight of the teacher,
    ``g`` the gradient of the task loss, averaged over the first ``TAYLOR_BATCHES`` training
    batches (seeded like the fine-tune's loader), keyed like the teacher's state dict. Candidates
    inherit the teacher's weights, so structured pruning ranks their channels by the scores of
    the teacher weights they inherited (``compression.pruning.inherited_scores``); once per
    run, as the teacher is trained once."""
    task = config.make_task()
    train_loader, _ = make_loaders(
        data,
        batch_size=config.train.batch_size or config.data.batch_size,
        num_workers=0,
        seed=config.seed,
    )
    batches = [
        tuple(to_device(part, device) for part in task.split(batch))
        for batch in islice(train_loader, TAYLOR_BATCHES)
    ]
    teacher.to(device).eval()
    scores = taylor_scores(teacher, batches, lambda model, b: task.loss(model(b[0]), b[1]))
    return {f"{name}.weight" if name else "weight": s.cpu() for name, s in scores.items()}
