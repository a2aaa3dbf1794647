import dataclasses
import subprocess
import sys

import pytest

from autocompress.hardware_profiles import (
    AnalyticProfile,
    HardwareMetrics,
    HardwareProfile,
    MeasuredProfile,
    create_hardware_profile,
    list_hardware_profiles,
    register_hardware_profile,
)


def test_both_profiles_registered():
    assert {"analytic", "measured"} <= set(list_hardware_profiles())
    assert isinstance(create_hardware_profile("analytic", device="bitfusion"), AnalyticProfile)
    profile = create_hardware_profile("measured", repeats=3)
    assert isinstance(profile, MeasuredProfile) and profile.name == "measured"


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        create_hardware_profile("oracle")
    assert "'name' parameter of create_hardware_profile" in str(err.value)
    assert "analytic" in str(err.value) and "measured" in str(err.value)


def test_register_new_duplicate_and_invalid():
    # The registry has no way to remove an entry: a name no other test uses; registering the
    # same class again (a rerun in this process) is harmless.
    @register_hardware_profile("test_base_constant")
    class Constant(HardwareProfile):
        def profile(self, model, *, input_shape):
            return HardwareMetrics(latency_ms=1.0, energy_mj=2.0, size_bytes=3, peak_mem_bytes=4)

    assert "test_base_constant" in list_hardware_profiles()
    profile = create_hardware_profile("test_base_constant")
    assert profile.name == "test_base_constant"
    assert profile.profile(None, input_shape=(1,)).size_bytes == 3

    with pytest.raises(ValueError, match="already registered"):

        @register_hardware_profile("analytic")
        class Impostor(HardwareProfile):
            def profile(self, model, *, input_shape):
                raise NotImplementedError

    with pytest.raises(TypeError):
        register_hardware_profile("not_a_profile")(dict)
    with pytest.raises(ValueError, match="'name' of a hardware profile"):
        register_hardware_profile("")


def test_abstract_profile_cannot_be_instantiated():
    with pytest.raises(TypeError):
        HardwareProfile()


def test_metrics_frozen_and_as_dict():
    m = HardwareMetrics(latency_ms=1.5, energy_mj=float("nan"), size_bytes=10, peak_mem_bytes=20)
    assert m.details == {} and not m.has_energy
    assert m.as_dict()["size_bytes"] == 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.latency_ms = 2.0


def test_import_does_not_load_onnxruntime():
    code = (
        "import sys, autocompress.hardware_profiles as hp; "
        "assert 'onnxruntime' not in sys.modules; print(hp.list_hardware_profiles())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "analytic" in out.stdout
