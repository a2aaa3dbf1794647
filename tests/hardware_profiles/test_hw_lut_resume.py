"""A LUT built on a remote agent survives a dropped connection: the journal keeps what was
measured and the next build on a restarted agent measures only the rest."""

import pytest
from torch import nn

from autocompress.hardware_profiles import RemoteProfile, build_lut, lut_build
from autocompress.hardware_profiles.agent import serve
from autocompress.hardware_profiles.lut_build import TimingJournal

pytest.importorskip("onnxruntime")

_SHAPE = (3, 8, 8)


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)
    ).eval()


def _remote(url: str) -> RemoteProfile:
    return RemoteProfile(url=url, warmup=0, repeats=2, threads=1, timeout_s=5)


def test_a_dropped_connection_resumes_from_the_journal(tmp_path, monkeypatch):
    monkeypatch.setattr(lut_build, "RETRY_PAUSES_S", (0.01,))
    journal = tmp_path / "lut.journal"
    settings = dict(warmup=0, repeats=2, rounds=1, threads=1, journal=journal)
    first = serve(port=0)
    stop_after = 4

    def drop(done, total):
        if done == stop_after:
            first.close()  # the device goes away mid-build

    with pytest.raises(RuntimeError, match="Run the same command again") as err:
        build_lut([(_model(), _SHAPE)], remote=_remote(first.url), progress=drop, **settings)
    assert f"{stop_after} timings kept in {journal}" in str(err.value)
    kept = dict(TimingJournal(journal).done)
    assert len(kept) == stop_after

    with serve(port=0) as second:  # back, at another address
        requests = []
        remote = _remote(second.url)
        original = remote.profile
        monkeypatch.setattr(
            remote, "profile", lambda *a, **k: requests.append(1) or original(*a, **k)
        )
        totals = []
        lut = build_lut(
            [(_model(), _SHAPE)], remote=remote, progress=lambda d, t: totals.append(t), **settings
        )
    assert len(requests) == totals[-1] - stop_after  # only what was missing
    assert len(lut) == 2 and lut.host["remote"] == second.url
    final = TimingJournal(journal).done
    assert all(final[key] == value for key, value in kept.items())  # kept figures reused


def test_a_torn_journal_line_is_ignored(tmp_path):
    path = tmp_path / "j"
    journal = TimingJournal(path)
    journal.add("a", 1.5)
    with path.open("a") as handle:
        handle.write('{"id": "b", "ms"')  # killed mid-write
    assert TimingJournal(path).done == {"a": 1.5}
