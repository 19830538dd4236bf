"""Board telemetry on a Jetson: `tegrastats` lines and sysfs, parsed into one sample record.

`tegrastats` prints one line per interval, e.g. on an AGX Orin:
    RAM 2448/62840MB (lfb 14458x4MB) SWAP 0/31420MB (cached 0MB) CPU [1%@729,off,...] EMC_FREQ 0%
    GR3D_FREQ 0% cpu@46.468C soc2@43.218C VDD_GPU_SOC 3170mW/3170mW VDD_CPU_CV 792mW/792mW
and on a Thor the same shape with Thor's sensors and rails (tj@, soc012@, VDD_GPU, VDD_CPU_SOC_MSS, VIN).
The format varies across boards and releases, so the parser reads the fields it knows, ignores fields it
does not know, and counts (never raises on) fields and lines it knows but cannot read.

sysfs readers take a root directory so they can be tested against a fake tree; `TelemetrySource` is what
the service polls: the latest sample, or None when not on a Jetson.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from nemotron_jetson.detect import JetsonInfo, detect

# Sensors that are powered off or absent read as -256 C (e.g. Orin's CV0 when the DLA is idle).
ABSENT_SENSOR_C = -256.0

_USED_TOTAL_MB = re.compile(r"^(\d+)/(\d+)MB$")
_LOAD = re.compile(r"^(\d+)%(?:@\[?([\d,]+)\]?)?$")
_CORE = re.compile(r"^(\d+)%@(\d+)$")
_TEMP = re.compile(r"^([A-Za-z][\w-]*)@(-?\d+(?:\.\d+)?)C$")
_TEMP_LIKE = re.compile(r"^[A-Za-z][\w-]*@.*C$")
_RAIL_NAME = re.compile(r"^[A-Z][A-Z0-9_]+$")
# Newer releases print "3170mW/3170mW"; older ones "3170/3170" (milliwatts either way).
_RAIL_VALUE = re.compile(r"^(\d+)(?:mW)?/(\d+)(?:mW)?$")
_RAIL_VALUE_LIKE = re.compile(r"^[\w.-]*mW/[\w.-]*$")


@dataclass
class TelemetrySample:
    """One reading of the board. Fields the source did not report are None (or empty)."""

    timestamp: float
    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    swap_used_mb: int | None = None
    swap_total_mb: int | None = None
    cpu_load_pct: list[int | None] = field(default_factory=list)  # per core; None: core powered off
    emc_load_pct: int | None = None  # memory controller: what bounds decode speed
    emc_freq_mhz: int | None = None
    gpu_load_pct: float | None = None
    gpu_freq_mhz: float | None = None
    temperatures: dict[str, float] = field(default_factory=dict)  # sensor -> degrees C
    power_mw: dict[str, int] = field(default_factory=dict)  # rail -> current milliwatts
    power_avg_mw: dict[str, int] = field(default_factory=dict)  # rail -> average milliwatts since start


class TegrastatsParser:
    """Parses tegrastats lines; `malformed` counts lines without a readable RAM field and known fields
    with unreadable values, so a monitoring system can alert on a format change instead of going blind."""

    def __init__(self) -> None:
        self.malformed = 0

    def parse(self, line: str, timestamp: float | None = None) -> TelemetrySample | None:
        """The sample in `line`, or None (and one more `malformed`) when it is not a tegrastats line."""
        tokens = line.split()
        sample = TelemetrySample(timestamp=time.time() if timestamp is None else timestamp)
        i = 0
        while i < len(tokens):
            i = self._field(tokens, i, sample)
        if sample.ram_total_mb is None:
            self.malformed += 1
            return None
        return sample

    def _field(self, tokens: list[str], i: int, sample: TelemetrySample) -> int:
        """Reads the field starting at tokens[i] into `sample`; returns the index of the next field."""
        name = tokens[i]
        value = tokens[i + 1] if i + 1 < len(tokens) else ""
        if name in ("RAM", "SWAP"):
            match = _USED_TOTAL_MB.match(value)
            if not match:
                self.malformed += 1
                return i + 1
            used, total = int(match.group(1)), int(match.group(2))
            if name == "RAM":
                sample.ram_used_mb, sample.ram_total_mb = used, total
            else:
                sample.swap_used_mb, sample.swap_total_mb = used, total
            return self._skip_parenthesised(tokens, i + 2)
        if name == "CPU":
            cores = self._cores(value)
            if cores is None:
                self.malformed += 1
            else:
                sample.cpu_load_pct = cores
            return i + 2
        if name in ("EMC_FREQ", "GR3D_FREQ"):
            match = _LOAD.match(value)
            if not match:
                self.malformed += 1
                return i + 1
            load = int(match.group(1))
            # GR3D_FREQ may list one frequency per GPC ("0%@[1575,1575]"); they run at one clock.
            freq = int(match.group(2).split(",")[0]) if match.group(2) else None
            if name == "EMC_FREQ":
                sample.emc_load_pct, sample.emc_freq_mhz = load, freq
            else:
                sample.gpu_load_pct = float(load)
                sample.gpu_freq_mhz = float(freq) if freq is not None else None
            return i + 2
        if "@" in name and name.endswith("C"):
            match = _TEMP.match(name)
            if match:
                celsius = float(match.group(2))
                if celsius != ABSENT_SENSOR_C:
                    sample.temperatures[match.group(1)] = celsius
            elif _TEMP_LIKE.match(name):
                self.malformed += 1
            return i + 1
        if _RAIL_NAME.match(name) and ("mW" in value or _RAIL_VALUE.match(value)):
            match = _RAIL_VALUE.match(value)
            if match:
                sample.power_mw[name] = int(match.group(1))
                sample.power_avg_mw[name] = int(match.group(2))
            elif _RAIL_VALUE_LIKE.match(value) or value.endswith("mW"):
                self.malformed += 1
            return i + 2
        return i + 1  # a field this parser does not read (NVENC off, APE 150, dates, ...)

    @staticmethod
    def _cores(value: str) -> list[int | None] | None:
        if not (value.startswith("[") and value.endswith("]")):
            return None
        cores: list[int | None] = []
        for core in value[1:-1].split(","):
            if core == "off":
                cores.append(None)
                continue
            match = _CORE.match(core)
            if not match:
                return None
            cores.append(int(match.group(1)))
        return cores

    @staticmethod
    def _skip_parenthesised(tokens: list[str], i: int) -> int:
        """Past "(lfb 14458x4MB)" / "(cached 0MB)", which follow RAM and SWAP."""
        if i < len(tokens) and tokens[i].startswith("("):
            while i < len(tokens) and not tokens[i].endswith(")"):
                i += 1
            return i + 1
        return i


def read_thermal_zones(root: Path | str = "/") -> dict[str, float]:
    """Zone type -> degrees C from /sys/class/thermal/thermal_zone*/{type,temp} (millidegrees).
    Zones that cannot be read (Thor's gpu-thermal while the GPU is power-gated) are left out."""
    temperatures: dict[str, float] = {}
    for zone in sorted(Path(root, "sys/class/thermal").glob("thermal_zone*")):
        try:
            name = (zone / "type").read_text().strip()
            millidegrees = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        if name and millidegrees / 1000 != ABSENT_SENSOR_C:
            temperatures[name] = millidegrees / 1000
    return temperatures


# Where the iGPU's load (per mille) lives differs across L4T releases and SoCs.
_GPU_LOAD_FILES = (
    "sys/devices/platform/gpu.0/load",
    "sys/devices/gpu.0/load",
    "sys/devices/platform/*.gpu/load",
    "sys/devices/platform/bus@0/*.gpu/load",
)


def read_gpu_load(root: Path | str = "/") -> float | None:
    """GPU load in percent, or None where the kernel exposes no load file."""
    for pattern in _GPU_LOAD_FILES:
        for path in sorted(Path(root).glob(pattern)):
            try:
                return int(path.read_text().strip()) / 10
            except (OSError, ValueError):
                continue
    return None


def read_gpu_freq_mhz(root: Path | str = "/") -> float | None:
    """Current GPU clock from the first devfreq device with "gpu" in its name (cur_freq is in Hz)."""
    for device in sorted(Path(root, "sys/class/devfreq").glob("*")):
        name = device.name
        try:
            name += " " + (device / "name").read_text().strip()
        except OSError:
            pass  # older kernels have no name file; the directory name ("17000000.gpu") says enough
        if "gpu" not in name.lower():
            continue
        try:
            return int((device / "cur_freq").read_text().strip()) / 1e6
        except (OSError, ValueError):
            continue
    return None


def read_meminfo_mb(root: Path | str = "/") -> tuple[int, int] | None:
    """(used, total) MB from /proc/meminfo, used meaning total minus available, as tegrastats counts it."""
    values: dict[str, int] = {}
    try:
        for line in Path(root, "proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key] = int(parts[0])  # kB
    except OSError:
        return None
    if "MemTotal" not in values or "MemAvailable" not in values:
        return None
    return (values["MemTotal"] - values["MemAvailable"]) // 1024, values["MemTotal"] // 1024


class TelemetrySource:
    """What the service polls: a fresh sysfs sample on each `latest()`, or None when not on a Jetson
    (no tegrastats subprocess to babysit; sysfs is cheap and needs no privileges)."""

    def __init__(self, root: Path | str = "/", info: JetsonInfo | None = None) -> None:
        self.root = Path(root)
        self.info = info if info is not None else detect(self.root)

    def latest(self) -> TelemetrySample | None:
        if not self.info.is_jetson:
            return None
        sample = TelemetrySample(timestamp=time.time())
        memory = read_meminfo_mb(self.root)
        if memory is not None:
            sample.ram_used_mb, sample.ram_total_mb = memory
        sample.gpu_load_pct = read_gpu_load(self.root)
        sample.gpu_freq_mhz = read_gpu_freq_mhz(self.root)
        sample.temperatures = read_thermal_zones(self.root)
        return sample
