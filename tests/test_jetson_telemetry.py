"""tegrastats parsing (Thor and Orin lines, malformed input) and the sysfs readers against a fake tree.

The sample lines follow the formats in NVIDIA's tegrastats documentation and published Thor/Orin output;
no Jetson was available, so they are reconstructions, not captures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nemotron_jetson.telemetry import (
    TegrastatsParser,
    TelemetrySource,
    read_gpu_freq_mhz,
    read_gpu_load,
    read_meminfo_mb,
    read_thermal_zones,
)

ORIN = (
    "RAM 2448/62840MB (lfb 14458x4MB) SWAP 0/31420MB (cached 0MB) "
    "CPU [1%@729,0%@729,0%@729,2%@729,off,off,off,off,0%@729,0%@729,0%@729,0%@729] "
    "EMC_FREQ 0% GR3D_FREQ 0% cpu@46.468C soc2@43.218C soc0@44.187C CV0@-256C gpu@44.281C tj@46.468C "
    "soc1@43.968C CV2@-256C CV1@-256C VDD_GPU_SOC 3170mW/3170mW VDD_CPU_CV 792mW/792mW VIN_SYS_5V0 4437mW/4437mW"
)
THOR = (
    "08-29-2025 14:03:12 RAM 9151/125772MB (lfb 12x4MB) SWAP 0/0MB (cached 0MB) "
    "CPU [2%@2601,0%@2601,1%@2601,0%@2601,0%@2601,0%@2601,0%@2601,0%@2601,0%@2601,0%@2601,0%@2601,0%@2601,"
    "0%@2601,0%@2601] EMC_FREQ 31%@4266 GR3D_FREQ 87%@[1575,1575] NVENC off NVDEC off APE 150 "
    "cpu@40.312C soc012@38.5C soc345@39.343C tj@40.312C "
    "VDD_GPU 21584mW/18022mW VDD_CPU_SOC_MSS 4755mW/4700mW VIN_SYS_5V0 5543mW/5543mW VIN 33112mW/29870mW"
)
NANO_OLD = "RAM 1523/3964MB (lfb 71x4MB) CPU [5%@102,off,off,3%@102] EMC_FREQ 0% GR3D_FREQ 0% POM_5V_IN 2836/2836 PLL@27C"


def test_orin_line() -> None:
    parser = TegrastatsParser()
    s = parser.parse(ORIN, timestamp=1.0)
    assert s is not None and parser.malformed == 0
    assert (s.ram_used_mb, s.ram_total_mb, s.swap_used_mb, s.swap_total_mb) == (2448, 62840, 0, 31420)
    assert s.cpu_load_pct == [1, 0, 0, 2, None, None, None, None, 0, 0, 0, 0]
    assert (s.emc_load_pct, s.emc_freq_mhz, s.gpu_load_pct, s.gpu_freq_mhz) == (0, None, 0.0, None)
    # CV0/CV1/CV2 read -256C: powered-off sensors, not temperatures.
    assert s.temperatures == {"cpu": 46.468, "soc2": 43.218, "soc0": 44.187, "gpu": 44.281, "tj": 46.468, "soc1": 43.968}
    assert s.power_mw == {"VDD_GPU_SOC": 3170, "VDD_CPU_CV": 792, "VIN_SYS_5V0": 4437}
    assert s.timestamp == 1.0


def test_thor_line() -> None:
    parser = TegrastatsParser()
    s = parser.parse(THOR)
    assert s is not None and parser.malformed == 0
    assert (s.ram_used_mb, s.ram_total_mb) == (9151, 125772)
    assert len(s.cpu_load_pct) == 14 and s.cpu_load_pct[0] == 2
    assert (s.emc_load_pct, s.emc_freq_mhz) == (31, 4266)
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (87.0, 1575.0)
    assert s.temperatures == {"cpu": 40.312, "soc012": 38.5, "soc345": 39.343, "tj": 40.312}
    assert s.power_mw == {"VDD_GPU": 21584, "VDD_CPU_SOC_MSS": 4755, "VIN_SYS_5V0": 5543, "VIN": 33112}
    assert s.power_avg_mw["VDD_GPU"] == 18022


def test_old_format_without_mw_suffix() -> None:
    parser = TegrastatsParser()
    s = parser.parse(NANO_OLD)
    assert s is not None and parser.malformed == 0
    assert s.power_mw == {"POM_5V_IN": 2836}
    assert s.temperatures == {"PLL": 27.0}


@pytest.mark.parametrize(("line", "bad_fields"), [
    (THOR.replace("EMC_FREQ 31%@4266", "EMC_FREQ lots"), 1),
    (THOR.replace("GR3D_FREQ 87%@[1575,1575]", "GR3D_FREQ 87"), 1),
    (THOR.replace("cpu@40.312C", "cpu@hotC"), 1),
    (THOR.replace("VDD_GPU 21584mW/18022mW", "VDD_GPU 21584mW"), 1),
    (THOR.replace("VIN 33112mW/29870mW", "VIN xmW/ymW"), 1),
    (THOR.replace("CPU [2%@2601,", "CPU [2%2601,"), 1),
    (THOR.replace("SWAP 0/0MB", "SWAP none"), 1),
    (THOR.replace("EMC_FREQ 31%@4266", "EMC_FREQ ?").replace("tj@40.312C", "tj@C"), 2),
])
def test_malformed_fields_are_counted_and_the_rest_is_kept(line: str, bad_fields: int) -> None:
    parser = TegrastatsParser()
    s = parser.parse(line)
    assert s is not None, "one bad field must not lose the sample"
    assert parser.malformed == bad_fields
    assert s.ram_total_mb == 125772


@pytest.mark.parametrize("line", ["", "tegrastats: command not found", "RAM ???", "CPU [1%@729] GR3D_FREQ 0%"])
def test_lines_without_ram_are_malformed_not_fatal(line: str) -> None:
    parser = TegrastatsParser()
    assert parser.parse(line) is None
    assert parser.malformed >= 1


def test_malformed_counter_accumulates_across_a_stream() -> None:
    parser = TegrastatsParser()
    stream = [ORIN, "garbage", THOR, THOR.replace("VIN 33112mW/29870mW", "VIN 1mW"), ""]
    samples = [parser.parse(line) for line in stream]
    assert [s is not None for s in samples] == [True, False, True, True, False]
    assert parser.malformed == 3


def _fake_sysfs(root: Path) -> Path:
    zones = {"cpu-thermal": "40312", "gpu-thermal": None, "tj-thermal": "41500", "cv0-thermal": "-256000"}
    for i, (name, temp) in enumerate(zones.items()):
        zone = root / f"sys/class/thermal/thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(name + "\n")
        if temp is not None:  # Thor's gpu-thermal has no readable temp while the GPU is power-gated
            (zone / "temp").write_text(temp + "\n")
    gpu = root / "sys/devices/platform/17000000.gpu"
    gpu.mkdir(parents=True)
    (gpu / "load").write_text("873\n")
    devfreq = root / "sys/class/devfreq"
    for name, freq in (("15820000.nvdla", "1000000"), ("17000000.gpu", "1300500000")):
        (devfreq / name).mkdir(parents=True)
        (devfreq / name / "cur_freq").write_text(freq + "\n")
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc/meminfo").write_text("MemTotal:       128790528 kB\nMemFree:  1000 kB\nMemAvailable:   119419904 kB\n")
    return root


def test_sysfs_readers(tmp_path: Path) -> None:
    root = _fake_sysfs(tmp_path)
    assert read_thermal_zones(root) == {"cpu-thermal": 40.312, "tj-thermal": 41.5}
    assert read_gpu_load(root) == 87.3
    assert read_gpu_freq_mhz(root) == 1300.5
    assert read_meminfo_mb(root) == ((128790528 - 119419904) // 1024, 128790528 // 1024)


def test_sysfs_readers_tolerate_absence(tmp_path: Path) -> None:
    assert read_thermal_zones(tmp_path) == {}
    assert read_gpu_load(tmp_path) is None
    assert read_gpu_freq_mhz(tmp_path) is None
    assert read_meminfo_mb(tmp_path) is None


def test_source_samples_a_jetson(tmp_path: Path) -> None:
    root = _fake_sysfs(tmp_path)
    (root / "etc").mkdir()
    (root / "etc/nv_tegra_release").write_text("# R38 (release), REVISION: 2.0, GCID: 1, BOARD: generic\n")
    sample = TelemetrySource(root).latest()
    assert sample is not None
    assert sample.gpu_load_pct == 87.3 and sample.gpu_freq_mhz == 1300.5
    assert sample.ram_total_mb == 128790528 // 1024
    assert "tj-thermal" in sample.temperatures


def test_source_is_none_off_jetson(tmp_path: Path) -> None:
    assert TelemetrySource(_fake_sysfs(tmp_path)).latest() is None


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli", "jetson", "telemetry", *args],
                          input=stdin, capture_output=True, text=True, timeout=120)


def test_cli_parses_a_captured_log_and_reports_malformed_lines(tmp_path: Path) -> None:
    log = tmp_path / "tegrastats.log"
    log.write_text("\n".join([THOR, "garbage", ORIN]) + "\n")
    result = _cli("--input", str(log))
    assert result.returncode == 0, result.stderr
    samples = [json.loads(line) for line in result.stdout.splitlines()]
    assert [s["ram_total_mb"] for s in samples] == [125772, 62840]
    assert "1 malformed" in result.stderr
    once = _cli("--input", "-", "--once", stdin=ORIN + "\n" + THOR + "\n")
    assert [json.loads(line)["ram_total_mb"] for line in once.stdout.splitlines()] == [62840]


def test_cli_samples_sysfs_under_a_jetson_root(tmp_path: Path) -> None:
    root = _fake_sysfs(tmp_path)
    (root / "etc").mkdir()
    (root / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 1\n")
    result = _cli("--root", str(root), "--once")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["gpu_load_pct"] == 87.3


def test_cli_off_jetson_says_so(tmp_path: Path) -> None:
    result = _cli("--root", str(tmp_path), "--once")
    assert result.returncode == 1
    assert "not a Jetson" in result.stderr
