"""The run config: one YAML file, validated with pydantic, loaded with ``yaml.safe_load``."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .core.errors import ConfigError
from .core.objectives import (
    Objective,
    check_trial_metric,
    parse_objective,
    trial_metric_directions,
)
from .core.plugins import import_plugin, load_installed_plugins
from .core.samplers import list_samplers
from .data import DataConfig
from .evaluators import TrainConfig, list_evaluators
from .evaluators.ptq import ptq_options
from .evaluators.simulated import simulated_options
from .spaces import ModelConfig, SpaceConfig, get_family
from .tasks import Task, create_task


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BudgetConfig(_Section):
    """Hard limits: a candidate over any of them is rejected before it is trained."""

    max_latency_ms: float | None = Field(default=None, gt=0)
    max_energy_mj: float | None = Field(default=None, gt=0)
    max_size_kb: float | None = Field(default=None, gt=0)
    max_peak_mem_kb: float | None = Field(default=None, gt=0)

    def limits(self) -> dict[str, float]:
        """metric name -> limit, for the limits that are set."""
        return {
            name.removeprefix("max_"): value
            for name, value in self.model_dump().items()
            if value is not None
        }


class HardwareConfig(_Section):
    profile: str = Field(
        default="analytic", description="analytic | measured | remote | lut | learned"
    )
    device: str = Field(
        default="cortex_a72", description="device spec name or YAML path (analytic profile)"
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="extra keyword arguments of the profile (e.g. measured: repeats, power_w; "
        "remote: url, token; lut: lut; learned: predictor)",
    )

    @field_validator("profile")
    @classmethod
    def _registered_profile(cls, profile: str) -> str:
        from .hardware_profiles import list_hardware_profiles

        if profile not in list_hardware_profiles():
            raise ValueError(f"must be one of {list_hardware_profiles()}. Got {profile!r}")
        return profile

    budget: BudgetConfig = Field(default_factory=BudgetConfig)


# Optuna storage URLs a search can share: SQLAlchemy URLs and Optuna's journal file.
_STORAGE_URL = re.compile(r"(sqlite|postgresql|mysql)(\+\w+)?://.+|journal:.+")
_RAY_ADDRESS = re.compile(r"auto|(ray://)?[^\s:/]+:\d+")


class RayConfig(_Section):
    """``search.ray``: how the Ray Tune backend (``search.backend: ray``) uses a cluster."""

    address: str | None = Field(
        default=None,
        description="None: start a private Ray head on 127.0.0.1; 'auto' or HOST:PORT: join "
        "a running cluster",
    )
    workers: int = Field(default=1, ge=1, description="trials evaluated at once")
    cpus_per_trial: float = Field(default=1.0, gt=0)
    gpus_per_trial: float = Field(default=0.0, ge=0)
    max_failures: int = Field(
        default=2, ge=0, description="restarts of a trial whose Ray worker died"
    )

    @field_validator("address")
    @classmethod
    def _known_address(cls, address: str | None) -> str | None:
        if address is not None and not _RAY_ADDRESS.fullmatch(address):
            raise ValueError(f"must be 'auto' or HOST:PORT. Got {address!r}")
        return address


class WorkerConfig(_Section):
    """``search.worker``: fault tolerance of ``autocompress worker`` processes sharing a study."""

    heartbeat_interval: int = Field(
        default=10, ge=1, description="seconds between a running trial's heartbeats"
    )
    grace_period: int | None = Field(
        default=None,
        ge=1,
        description="seconds without a heartbeat after which a running trial is failed and "
        "retried; defaults to 2 x heartbeat_interval",
    )
    max_retry: int = Field(default=2, ge=0, description="retries of a trial whose worker died")

    @property
    def stale_after_s(self) -> int:
        """``grace_period`` with its default: seconds after which a silent trial is stale."""
        return self.grace_period or 2 * self.heartbeat_interval

    threads: int | None = Field(
        default=None,
        ge=1,
        description="torch threads of each worker process (default: torch's, one per core); "
        "set it to cores / workers when workers share a machine",
    )


class EarlyStoppingConfig(_Section):
    """``search.early_stopping``: multi-objective successive halving inside each trial's training
    (see ``evaluators/early_stopping.py``). At each rung (``min_epochs * eta**k`` epochs, below
    ``train.epochs``) a candidate is stopped when at least ``max(min_dominators, (n + 1) // eta)``
    of the ``n`` earlier candidates at that rung were as accurate at no higher hardware cost.
    Stopped trials are recorded as PRUNED with their rung; they count towards ``n_trials``."""

    enabled: bool = True
    min_epochs: int = Field(default=1, ge=1, description="epochs of the first rung")
    eta: int = Field(default=3, ge=2, description="rung growth factor and halving rate")
    min_dominators: int = Field(
        default=2, ge=1, description="never stop a candidate beaten by fewer candidates"
    )
    min_records: int = Field(
        default=4, ge=0, description="stop nothing at a rung until this many candidates reached it"
    )
    ptq_rung: bool = Field(
        default=False,
        description="a rung at 0 epochs: each candidate's post-training quantized score is "
        "judged before any training (PTQ first, QAT only for the candidates it keeps)",
    )


class PrescreenConfig(_Section):
    """``search.prescreen``: an accuracy predictor (random forest on the candidate's bits, ratios
    and architecture) fitted on the completed trials skips, untrained, a sampled candidate that a
    completed one beats at no higher hardware cost even at the predictor's optimistic bound
    (mean + kappa x std of its trees). Skipped trials are recorded as PRUNED with the prediction;
    they do not count towards ``n_trials``."""

    enabled: bool = False
    min_trials: int = Field(
        default=16, ge=2, description="completed trials before the predictor is used"
    )
    kappa: float = Field(default=1.0, ge=0, description="optimism: std units added to the mean")
    refit_every: int = Field(
        default=4, ge=1, description="refit the predictor after this many new completed trials"
    )
    max_consecutive_skips: int = Field(
        default=20,
        ge=1,
        description="after this many skipped trials in a row the next candidate is trained anyway",
    )


class SurrogateConfig(_Section):
    """``search.surrogate``: model-based proposals (see ``search/surrogate.py``). After
    ``min_trials`` completed trials, each finished trial queues, among a pool of ``pool_size``
    untried candidates drawn at random and priced, the one whose optimistic accuracy
    (random-forest mean + kappa x std) at its known hardware cost adds the most hypervolume to
    the front. The pool persists: each proposal draws ``refresh`` new candidates (the tried and
    the oldest make room), so pricing and the proxy cost ``refresh`` candidates per trial, not a
    whole pool. The sampler draws every trial nobody queued. Every backend: the Ray driver
    queues proposals in the study as the Optuna backend and workers do; running trials count
    as pending results at their optimistic accuracy (a constant liar), so concurrent proposals
    spread over the front."""

    enabled: bool = True
    min_trials: int = Field(
        default=10, ge=2, description="completed trials drawn by the sampler before proposals"
    )
    pool_size: int = Field(default=32, ge=1, description="untried candidates a proposal ranks")
    refresh: int = Field(
        default=8,
        ge=1,
        description="new candidates drawn and priced per proposal (the oldest make room)",
    )
    kappa: float = Field(default=1.0, ge=0, description="optimism: std units added to the mean")
    proxy: bool = Field(
        default=True,
        description="feed the predictor each candidate's zero-shot accuracy (teacher weights "
        "inherited, compressed, BatchNorm recalibrated, no training) on up to 16 validation "
        "batches",
    )


class WarmStartConfig(_Section):
    """``search.warm_start``: candidates queued before the sampler draws any. ``sensitivity``
    measures, on ``batches`` training batches, how far the checkpoint's output moves when each
    layer alone is quantized, pruned or (for droppable blocks) dropped, then gives each layer
    the choices that minimise the summed distortion at ``candidates`` cost levels (from 0.8 down
    to 0.15 of uniform int8, its hardware objectives priced on the run's profile; see
    ``search/warm_start.py``). A random first generation compresses many layers of a compact
    network too hard for the search to find its mild points in a few trials. ``auto``:
    ``sensitivity`` when a ``model`` section names a trained checkpoint, else none (a built-in
    family's teacher is only one of its architectures)."""

    method: Literal["auto", "sensitivity", "none"] = "auto"
    candidates: int = Field(
        default=4, ge=1, description="candidates queued: both ends of the cost range first"
    )
    batches: int = Field(
        default=1, ge=1, description="training batches the distortions are measured on"
    )


class EvaluatorConfig(_Section):
    """``evaluator:``: how a candidate that fits the budget is scored. ``train`` (default):
    QAT + distillation as the ``train:`` section says; ``supernet``: a weight-sharing supernet
    trained once per run, then a short fine-tune per candidate (options: see
    ``evaluators.supernet.supernet_evaluator``). Evaluators registered from Python with
    ``register_evaluator`` are valid names too."""

    name: str = "train"
    options: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the evaluator"
    )

    @field_validator("name")
    @classmethod
    def _registered_evaluator(cls, name: str) -> str:
        if name not in list_evaluators():
            raise ValueError(f"must be one of {list_evaluators()}. Got {name!r}")
        return name

    @model_validator(mode="after")
    def _evaluator_options(self) -> EvaluatorConfig:
        # Checked on load too, not only when the evaluator is built (after the teacher trained).
        if self.name == "ptq":
            ptq_options(self.options)
        elif self.name == "simulated":
            simulated_options(self.options)
        return self


class SearchConfig(_Section):
    n_trials: int = Field(default=40, gt=0)
    sampler: str = Field(
        default="nsga2",
        description="nsga2 | tpe | random, or a name registered with core.register_sampler",
    )
    population_size: int = Field(default=16, ge=2)
    n_jobs: int = Field(default=1, ge=1)
    timeout_s: float | None = Field(default=None, gt=0)
    objectives: list[str] = Field(default=["accuracy", "latency_ms", "size_kb"], min_length=2)
    save_models: bool = True
    backend: Literal["optuna", "ray"] = "optuna"
    storage: str | None = Field(
        default=None,
        description="Optuna storage URL (sqlite:///PATH, postgresql://..., journal:PATH); "
        "default: the run folder's study.db",
    )
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    prescreen: PrescreenConfig = Field(default_factory=PrescreenConfig)
    surrogate: SurrogateConfig = Field(default_factory=SurrogateConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    warm_start: WarmStartConfig = Field(default_factory=WarmStartConfig)

    @field_validator("sampler")
    @classmethod
    def _registered_sampler(cls, sampler: str) -> str:
        if sampler not in list_samplers():
            raise ValueError(f"must be one of {list_samplers()}. Got {sampler!r}")
        return sampler

    @field_validator("storage")
    @classmethod
    def _known_storage(cls, storage: str | None) -> str | None:
        if storage is not None and not _STORAGE_URL.fullmatch(storage):
            raise ValueError(
                "must be an Optuna storage URL: sqlite:///PATH, postgresql://USER@HOST/DB, "
                f"mysql://USER@HOST/DB or journal:PATH. Got {storage!r}"
            )
        return storage

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, objectives: list[str]) -> list[str]:
        # Which names a trial records depends on the task: RunConfig checks them.
        names = [o.partition(":")[0].strip() for o in objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives must be distinct. Got {names}")
        return objectives


# search.* fields that may change when a run is resumed; every other field is fingerprinted.
RESUMABLE_SEARCH_FIELDS = (
    "n_trials",
    "n_jobs",
    "timeout_s",
    "save_models",
    "backend",
    "storage",
    "ray",
    "worker",
    "warm_start",  # acts only on a study without trials
)


# Config fields that run folders made by autocompress 0.1 do not have (see RunConfig.fingerprint).
FIELDS_ADDED_SINCE_0_1 = (
    "model",
    "task",
    "evaluator",
    "space.exclude",
    "space.overrides",
    "space.rank_ratios",
    "space.factorizations",
    "search.early_stopping.ptq_rung",
    "space.quantizers",
    "space.sparsity",
    "space.sparsity_importance",
    "space.pruning_importance",
)


class RunConfig(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    plugins: list[str] = Field(
        default_factory=list,
        description="modules or .py files imported before the rest of the config is read",
    )
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig | None = None
    task: str = Field(
        default="classification",
        description="classification | regression | segmentation, a name registered with "
        "tasks.register_task, or 'package.module:TaskClass'",
    )
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    teacher: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=20))
    train: TrainConfig = Field(default_factory=TrainConfig)
    hardware: HardwareConfig = Field(default_factory=HardwareConfig)
    evaluator: EvaluatorConfig = Field(default_factory=EvaluatorConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        create_task(task)
        return task

    @model_validator(mode="after")
    def _objectives_are_trial_metrics(self) -> RunConfig:
        task = self.make_task()
        # The default objectives name classification's metric: another task's primary metric
        # stands in for it unless the objectives were written out.
        if "objectives" not in self.search.model_fields_set and "accuracy" not in task.metrics:
            self.search.objectives = [
                task.primary if o == "accuracy" else o for o in self.search.objectives
            ]
        metrics = trial_metric_directions(task.metrics)
        for text in self.search.objectives:
            name = text.partition(":")[0].strip()
            if name not in metrics:
                raise ValueError(
                    f"The 'search.objectives' field must name metrics that a trial of task "
                    f"{self.task!r} records: {list(metrics)} (optionally as 'name:max' / "
                    f"'name:min'). Got {name!r}."
                )
            check_trial_metric(parse_objective(text, metrics), metrics)
        return self

    @model_validator(mode="after")
    def _model_is_the_space(self) -> RunConfig:
        # A network of the user's own is searched as the "model" family, whose arch the model
        # section fills in: space.family and space.arch would only say it twice.
        if self.model is None:
            return self
        if "family" in self.space.model_fields_set and self.space.family != "model":
            raise ValueError(
                "The 'space.family' field must be left out (or be 'model') when a 'model' "
                f"section names the network. Got {self.space.family!r}."
            )
        self.space.family = "model"
        self.space.arch = self.model.space_arch()
        return self

    @model_validator(mode="after")
    def _warm_start_needs_a_checkpoint(self) -> RunConfig:
        if self.search.warm_start.method == "sensitivity" and (
            self.model is None or self.model.checkpoint is None
        ):
            raise ValueError(
                "The 'search.warm_start.method' field can be 'sensitivity' only when a 'model' "
                "section names a trained checkpoint (model.checkpoint): the sensitivities are "
                "those of its weights. Got no checkpoint."
            )
        return self

    def warm_start_method(self) -> str:
        """``search.warm_start.method`` with ``auto`` resolved."""
        method = self.search.warm_start.method
        if method == "auto":
            has_checkpoint = self.model is not None and self.model.checkpoint is not None
            return "sensitivity" if has_checkpoint else "none"
        return method

    def wants_energy(self) -> bool:
        """Whether the run prices energy: an energy_mj objective or an energy budget."""
        in_objectives = "energy_mj" in {o.name for o in self.objectives()}
        return in_objectives or self.hardware.budget.max_energy_mj is not None

    @model_validator(mode="after")
    def _energy_needs_a_power_figure(self) -> RunConfig:
        # A CPU timing gives latency only; energy needs the device's power draw.
        wants_energy = self.wants_energy()
        options = self.hardware.options
        # On CUDA the measured profile reads the GPU's energy counter through NVML instead.
        on_gpu = str(options.get("device", "cpu")).startswith("cuda")
        if self.hardware.profile in {"measured", "remote"} and wants_energy and not on_gpu:
            if "power_w" not in options:
                raise ValueError(
                    "The 'hardware.options.power_w' field is required when a timed profile "
                    "must report energy (energy_mj objective or max_energy_mj budget): energy is "
                    "estimated as power_w x measured latency."
                )
        return self

    @model_validator(mode="after")
    def _prescreen_needs_the_primary_metric(self) -> RunConfig:
        # It compares candidates' primary metric (accuracy) at no higher hardware cost. Early
        # stopping and the surrogate do too, but they are on by default and simply stay out of
        # the way where they do not apply (a run's config.yaml spells every default out, so an
        # explicit request cannot be told from a default there).
        primary = self.make_task().primary
        if self.search.prescreen.enabled and primary not in {o.name for o in self.objectives()}:
            raise ValueError(
                f"The 'search.prescreen.enabled' field needs {primary!r} (the task's primary "
                f"metric) among search.objectives (got {self.search.objectives}); set it to false."
            )
        return self

    @model_validator(mode="after")
    def _teacher_has_no_feature_kd(self) -> RunConfig:
        # The teacher trains from scratch: there is no network whose features it could match.
        if self.teacher.feature_kd is not None:
            raise ValueError(
                "The 'teacher.feature_kd' field must be left out: the teacher is trained from "
                "scratch, with no teacher of its own (set train.feature_kd instead)."
            )
        return self

    def make_task(self) -> Task:
        """The task the ``task`` field names."""
        return create_task(self.task)

    def objectives(self) -> list[Objective]:
        metrics = trial_metric_directions(self.make_task().metrics)
        return [parse_objective(o, metrics) for o in self.search.objectives]

    def score_objective(self) -> Objective | None:
        """The task's primary metric (what early stopping, prescreen, the surrogate and refit
        compare), when it is an objective of the search."""
        score = self.make_task().score
        return score if score.name in {o.name for o in self.objectives()} else None

    def fingerprint(self) -> str:
        """Hash of everything that changes what a trial means (not n_trials, n_jobs, timeout, nor
        where and how trials run: the same study may go on under another backend)."""
        # Where plugins live is not what a trial means: a moved file leaves the run resumable.
        relevant = self.model_dump(
            mode="json", exclude={"plugins": True, "search": set(RESUMABLE_SEARCH_FIELDS)}
        )
        # Fields added since runs were first fingerprinted are hashed as absent while they hold
        # their default, so a run folder whose config predates them resumes.
        defaults = RunConfig.model_validate({"name": self.name}).model_dump(mode="json")
        for path in FIELDS_ADDED_SINCE_0_1:
            *sections, key = path.split(".")
            section, default = relevant, defaults
            for part in sections:
                section, default = section[part], default[part]
            if section[key] == default[key]:
                del section[key]
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def format_validation_error(err: ValidationError, *, source: str) -> str:
    """One line per error: the field's dotted path, pydantic's message and the value given,
    unless the message already names what it got.

    The project's validators end their messages "Got X" (X at times only the offending part,
    e.g. a list's bad entries), and a validator of a registered extension may end its message
    with the value. Pydantic's own messages name the limit ("greater than 0"), never the input,
    so only a validator's message (a raised ValueError or assert) is matched by its ending."""
    lines = [f"{source}: invalid config"]
    for e in err.errors():
        loc = ".".join(str(part) for part in e["loc"]) or "(top level)"
        message = e["msg"]
        got = e.get("input")
        tail = message.rstrip(" .").removesuffix(" instead")
        says_got = "Got " in message or (
            e["type"] in ("value_error", "assertion_error")
            and any(text and tail.endswith(text) for text in (repr(got), str(got)))
        )
        got_text = "" if isinstance(got, dict) or says_got else f" (got {got!r})"
        lines.append(f"  {loc}: {message}{got_text}")
    return "\n".join(lines)


def parse_config(data: Any, *, source: str = "<config>", base: Path | None = None) -> RunConfig:
    """Validate a run config mapping; ``source`` names it in errors. Its ``plugins`` are imported
    first (``.py`` files relative to ``base``), and the installed ones, since they register the
    names the rest of the config may use."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: a run config must be a YAML mapping. Got {type(data).__name__}"
        )
    data = {**data, "plugins": import_plugins(data.get("plugins", []), source=source, base=base)}
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source=source)) from None
    # The arch knobs belong to the family, so they are validated by the family's own model;
    # the error locations are prefixed so they still name the config field.
    try:
        arch = get_family(config.space.family).space_model.model_validate(config.space.arch)
    except ValidationError as err:
        message = format_validation_error(err, source=source)
        raise ConfigError(re.sub(r"^  ", "  space.arch.", message, flags=re.M)) from None
    config.space.arch = arch.model_dump()
    return config


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``data`` (a config mapping, changed in place and returned) with ``FIELD=VALUE`` overrides
    applied, e.g. ``train.epochs=1`` or ``space.w_bits=[4, 8]``: FIELD is a dotted path whose
    sections exist, VALUE is parsed as YAML. The result still goes through :func:`parse_config`,
    which names any field or value it rejects."""
    for override in overrides:
        path, sep, text = override.partition("=")
        parts = path.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(
                f"Override {override!r}: expected FIELD=VALUE (FIELD a dotted path), e.g. "
                "train.epochs=1"
            )
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"Override {override!r}: VALUE is not valid YAML: {err}") from None
        section = data
        for depth, part in enumerate(parts[:-1]):
            section = section.get(part) if isinstance(section, dict) else None
            if not isinstance(section, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"Override {override!r}: {where!r} is not a config section.")
        section[parts[-1]] = value
    return data


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist (expected a YAML run config).")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_config(data, source=str(path), base=path.parent)


def import_plugins(specs: Any, *, source: str = "<config>", base: Path | None = None) -> list[str]:
    """Import the plugins ``specs`` (modules or ``.py`` files) and the installed ones; the
    specs as recorded in a run folder's config (files by absolute path)."""
    if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
        raise ConfigError(
            f"{source}: the 'plugins' field must be a list of module names or .py files. "
            f"Got {specs!r} instead."
        )
    load_installed_plugins()
    imported = []
    for spec in specs:
        try:
            imported.append(import_plugin(spec, base=base))
        except ImportError as err:
            raise ConfigError(
                f"{source}: the 'plugins' field names {spec!r}, which cannot be imported "
                f"({err}). Install it, fix the path, or pass it with --import."
            ) from None
    return imported


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
