"""benchmarks/encode_throughput.py and _machine.py: what a JSON records (CPU features, ISA emulation,
the three side-by-side measurements), on a CI-sized synthetic run."""

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def modules(benchmark_module):
    with benchmark_module("_machine") as machine, benchmark_module("encode_throughput") as encode_throughput:
        yield machine, encode_throughput


def test_the_machine_record_names_the_isa_caps_in_force(modules, monkeypatch):
    machine = modules[0]
    for name in machine.ISA_CAPS:
        monkeypatch.delenv(name, raising=False)
    assert machine.isa_emulation()["emulating"] is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    emulation = machine.isa_emulation()
    assert emulation["emulating"] is True and emulation["ONEDNN_MAX_CPU_ISA"] == "AVX2"


def test_cpu_features_are_the_real_cpu_flags(modules):
    features = modules[0].cpu_features()
    assert set(features) >= {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        assert not any(features.values())
        return
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("flags")), [])
    assert features["avx2"] == ("avx2" in flags) and features["avx512_bf16"] == ("avx512_bf16" in flags)


def test_a_small_run_measures_export_ceiling_and_dataloader_loop_side_by_side(modules, tmp_path):
    encode_throughput = modules[1]
    out = tmp_path / "result.json"
    result = encode_throughput.main(
        ["--images", "64", "--batch-size", "32", "--rounds", "1", "--skip-memory", "--out", str(out)]
    )
    assert out.exists()
    (only,) = result["rounds"]
    assert result["fraction_of_pil_ceiling"] == pytest.approx(only["export"]["images_per_second"] / only["pil_decode_ceiling"], abs=1e-3)
    assert result["speedup_over_dataloader_loop"] == pytest.approx(only["export"]["images_per_second"] / only["dataloader_loop"], abs=0.01)
    assert set(only["export"]["time_shares"]) >= {"waiting_for_decoder", "encoding", "writing"}
    assert only["export"]["settings"]["precision"] in ("float32", "bfloat16")
    assert "cpu_features" in result["machine"] and "isa_emulation" in result["machine"]


def test_where_the_export_decodes_in_processes_the_run_sets_it_beside_both_ceilings(modules, monkeypatch):
    import torch

    from bafo_pipeline.data import decode_pool

    if not decode_pool.processes_available():
        pytest.skip("this platform cannot fork decoder processes")
    monkeypatch.setattr(decode_pool, "MIN_IMAGES_FOR_PROCESSES", 32)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = modules[1].main(["--images", "64", "--batch-size", "32", "--rounds", "1", "--skip-memory",
                                  "--skip-dataloader"])
    finally:
        torch.set_num_threads(before)
    (only,) = result["rounds"]
    assert only["export"]["settings"]["decode_processes"] >= 1
    assert only["export_in_threads"]["settings"]["decode_processes"] == 0
    assert result["fraction_of_process_ceiling"] == pytest.approx(
        only["export"]["images_per_second"] / only["process_decode_ceiling"], abs=1e-3)
    assert result["speedup_over_export_in_threads"] == pytest.approx(
        only["export"]["images_per_second"] / only["export_in_threads"]["images_per_second"], abs=0.01)
    assert only["export"]["cpu_microseconds_per_image"]["decoder_processes"] > 0  # the decoders' CPU is counted
    assert only["export_in_threads"]["cpu_microseconds_per_image"]["decoder_processes"] == 0
