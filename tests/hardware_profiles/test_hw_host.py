import pytest

from autocompress.hardware_profiles import host_device_spec
from autocompress.hardware_profiles.host import cpu_model, host_facts, read_cpuinfo

_CPUINFO = """processor\t: 0
model name\t: Example CPU @ 3.00GHz
cpu MHz\t\t: 2999.5
flags\t\t: fpu sse avx2 fma

processor\t: 1
model name\t: Other CPU
cpu MHz\t\t: 1200.0
flags\t\t: fpu avx512f
"""


def test_read_cpuinfo_takes_the_first_cpu(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(_CPUINFO)
    info = read_cpuinfo(path)
    assert info.model == "Example CPU @ 3.00GHz" and info.mhz == 2999.5
    assert info.flags == {"fpu", "sse", "avx2", "fma"}


def test_read_cpuinfo_of_a_missing_file_is_empty(tmp_path):
    info = read_cpuinfo(tmp_path / "nope")
    assert info.model is None and info.mhz is None and not info.flags


def test_host_facts_name_the_machine_and_libraries():
    facts = host_facts(backend="torch", threads=2)
    assert {"cpu_model", "logical_cpus", "torch", "numpy", "python"} <= set(facts)
    assert facts["threads"] == 2 and "onnxruntime" not in facts
    assert facts["cpu_model"] == cpu_model()


def test_host_spec_names_this_cpu():
    spec = host_device_spec(threads=2)
    assert spec.name == "host" and cpu_model() in spec.description
    assert spec.supported_bits == [32] and spec.peak_macs_per_s[32] > 0


@pytest.mark.parametrize("threads", [0, True, 1.5])
def test_host_device_spec_rejects_bad_threads(threads):
    with pytest.raises(ValueError, match="'threads' parameter of host_device_spec"):
        host_device_spec(threads=threads)
