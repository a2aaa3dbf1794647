"""The run folder: the one place that spells its file names.

A run lives in ``runs/<name>/``::

    config.yaml           the resolved run config
    study.db              the Optuna study (SQLite; unless search.storage names another)
    trials.csv            one row per trial (see core.trials)
    pareto.csv            the Pareto front's rows
    hypervolume.csv/.png  hypervolume after each trial
    pareto.png            the front, pairwise projections
    refit.csv             search vs refit accuracy (a folder written by ``autocompress refit``)
    teacher/              the uncompressed teacher (a saved-model folder)
    given_model.pt        the weights of a network given to ``api.compress`` as an object
    supernet/             the trained supernet of the supernet evaluator (a saved-model folder)
    trials/<N>/           trial N's saved model, worker.json, and (Ray) result.json
    ray/                  Ray Tune experiments (``search.backend: ray``)
    report/               ``autocompress report``'s output
    export/trial_<N>/     ``autocompress export``'s output
    *.lock                locks of the processes sharing the folder

A saved-model folder holds ``spec.json`` (what rebuilds the architecture) and ``model.pt`` (its
state_dict); see ``compression.serialization``.
"""

from __future__ import annotations

from pathlib import Path

MODEL_SPEC_FILE = "spec.json"
MODEL_WEIGHTS_FILE = "model.pt"


class RunDir:
    """The layout of the run folder at ``path`` (nothing is created until written). Accepted
    wherever a path is (``os.fspath``), and by its own constructor."""

    __slots__ = ("path",)

    def __init__(self, path: str | Path | RunDir) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # --- what a search writes --------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def study_file(self) -> Path:
        return self.path / "study.db"

    @property
    def study_url(self) -> str:
        """The default storage: the folder's SQLite study."""
        return f"sqlite:///{self.study_file}"

    @property
    def trials_table(self) -> Path:
        return self.path / "trials.csv"

    @property
    def front_table(self) -> Path:
        return self.path / "pareto.csv"

    @property
    def hypervolume_table(self) -> Path:
        return self.path / "hypervolume.csv"

    @property
    def front_plot(self) -> Path:
        return self.path / "pareto.png"

    @property
    def hypervolume_plot(self) -> Path:
        return self.path / "hypervolume.png"

    @property
    def refit_table(self) -> Path:
        return self.path / "refit.csv"

    @property
    def teacher_dir(self) -> Path:
        return self.path / "teacher"

    @property
    def given_model(self) -> Path:
        """The weights of the network ``api.compress`` was given: the run's checkpoint."""
        return self.path / "given_model.pt"

    @property
    def supernet_dir(self) -> Path:
        return self.path / "supernet"

    def trial_dir(self, number: int) -> Path:
        return self.path / "trials" / str(number)

    def worker_file(self, number: int) -> Path:
        """Which process trains trial ``number`` (host, pid, start time)."""
        return self.trial_dir(number) / "worker.json"

    def ray_result_file(self, number: int) -> Path:
        """Trial ``number``'s result as reported to Ray Tune, kept for a driver restart."""
        return self.trial_dir(number) / "result.json"

    @property
    def ray_dir(self) -> Path:
        return self.path / "ray"

    # --- what later commands write ---------------------------------------------------------
    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    def export_dir(self, number: int) -> Path:
        return self.path / "export" / f"trial_{number}"

    # --- locks of the processes sharing the folder -----------------------------------------
    @property
    def search_lock(self) -> Path:
        """Pid file of the single-process search (``search`` / ``refit``)."""
        return self.path / "search.lock"

    @property
    def teacher_lock(self) -> Path:
        return self.path / "teacher.lock"

    @property
    def results_lock(self) -> Path:
        return self.path / "results.lock"

    @property
    def study_lock(self) -> Path:
        return self.path / "study.lock"

    def has_model(self, number: int) -> bool:
        """Whether trial ``number`` saved a complete model (its spec is written last)."""
        return (self.trial_dir(number) / MODEL_SPEC_FILE).is_file()
