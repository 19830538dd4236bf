"""Is this a Jetson, which one, and which L4T/JetPack release: read from files under a root directory.

Everything comes from three files so it can be tested on any machine against a fake root:
/etc/nv_tegra_release (L4T release), /proc/device-tree/model and /proc/device-tree/compatible (board and SoC).
A machine that is not a Jetson gives `is_jetson=False`, never an exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# L4T major -> JetPack major. Minor releases map less regularly (L4T 36.4.3 is JetPack 6.2), so only the
# major is claimed: enough to pick wheels and known issues, and never wrong.
JETPACK_FOR_L4T_MAJOR = {38: "7.x", 36: "6.x", 35: "5.x", 34: "5.x", 32: "4.x"}
SOC_NAMES = {"tegra264": "Thor", "tegra234": "Orin", "tegra194": "Xavier", "tegra210": "Nano/TX1"}

_RELEASE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([0-9]+(?:\.[0-9]+)*)")
_SOC = re.compile(r"nvidia,(tegra\d+)")


@dataclass(frozen=True)
class JetsonInfo:
    is_jetson: bool
    model: str | None = None  # e.g. "NVIDIA Jetson AGX Thor Developer Kit"
    soc: str | None = None  # "tegra264" (Thor), "tegra234" (Orin), ...
    l4t_release: str | None = None  # e.g. "38.2.0"
    jetpack: str | None = None  # e.g. "7.x"

    @property
    def is_thor(self) -> bool:
        return self.soc == "tegra264" or (self.model is not None and "Thor" in self.model)

    def describe(self) -> str:
        if not self.is_jetson:
            return "not a Jetson"
        parts = [self.model or f"unknown Jetson ({self.soc or 'unknown SoC'})"]
        if self.soc:
            parts.append(f"SoC {self.soc}")
        parts.append(f"L4T {self.l4t_release}" if self.l4t_release else "L4T release unknown")
        if self.jetpack:
            parts.append(f"JetPack {self.jetpack}")
        return ", ".join(parts)


def detect(root: Path | str = "/") -> JetsonInfo:
    root = Path(root)
    model = _read_text(root / "proc/device-tree/model")
    compatible = _read_text(root / "proc/device-tree/compatible", keep_nul=True)
    release_line = _read_text(root / "etc/nv_tegra_release")

    soc = None
    if compatible:
        for entry in compatible.split("\0"):
            match = _SOC.fullmatch(entry.strip())
            if match:
                soc = match.group(1)
                break
    l4t_release, jetpack = _parse_release(release_line)
    # The release file alone is proof enough (containers may hide the device tree); a tegra SoC is too.
    is_jetson = soc is not None or l4t_release is not None
    if not is_jetson:
        return JetsonInfo(is_jetson=False, model=model or None)
    return JetsonInfo(True, model or None, soc, l4t_release, jetpack)


def _parse_release(line: str | None) -> tuple[str | None, str | None]:
    """`# R38 (release), REVISION: 2.0, GCID: ...` -> ("38.2.0", "7.x")."""
    if not line:
        return None, None
    match = _RELEASE.search(line)
    if not match:
        return None, None
    major = int(match.group(1))
    return f"{major}.{match.group(2)}", JETPACK_FOR_L4T_MAJOR.get(major)


def _read_text(path: Path, keep_nul: bool = False) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    text = data.decode("utf-8", errors="replace")
    # Device-tree strings are NUL-terminated; `compatible` is a NUL-separated list.
    return text.strip("\0 \n") if keep_nul else text.replace("\0", "").strip()
