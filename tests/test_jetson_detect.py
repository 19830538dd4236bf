"""Jetson detection against fake root directories laid out like a Thor, an Orin, and a plain PC."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nemotron_jetson.detect import detect

THOR_RELEASE = "# R38 (release), REVISION: 2.0, GCID: 41844464, BOARD: generic, EABI: aarch64, DATE: Fri Aug 22 00:55:42 UTC 2025\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n"
ORIN_RELEASE = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n"


def _board(root: Path, release: str | None, model: bytes | None, compatible: bytes | None) -> Path:
    if release is not None:
        (root / "etc").mkdir(parents=True)
        (root / "etc/nv_tegra_release").write_text(release)
    dt = root / "proc/device-tree"
    dt.mkdir(parents=True)
    if model is not None:
        (dt / "model").write_bytes(model)
    if compatible is not None:
        (dt / "compatible").write_bytes(compatible)
    return root


def test_thor_developer_kit(tmp_path: Path) -> None:
    root = _board(tmp_path, THOR_RELEASE, b"NVIDIA Jetson AGX Thor Developer Kit\0",
                  b"nvidia,p3971-0080+p3834-0008\0nvidia,p3834-0008\0nvidia,tegra264\0")
    info = detect(root)
    assert info.is_jetson and info.is_thor
    assert info.model == "NVIDIA Jetson AGX Thor Developer Kit"
    assert info.soc == "tegra264"
    assert info.l4t_release == "38.2.0"
    assert info.jetpack == "7.x"
    assert info.describe() == "NVIDIA Jetson AGX Thor Developer Kit, SoC tegra264, L4T 38.2.0, JetPack 7.x"


def test_orin_developer_kit(tmp_path: Path) -> None:
    root = _board(tmp_path, ORIN_RELEASE, b"NVIDIA Jetson AGX Orin Developer Kit\0",
                  b"nvidia,p3737-0000+p3701-0005\0nvidia,p3701-0005\0nvidia,tegra234\0")
    info = detect(root)
    assert info.is_jetson and not info.is_thor
    assert (info.soc, info.l4t_release, info.jetpack) == ("tegra234", "36.4.3", "6.x")


@pytest.mark.parametrize(("release", "l4t", "jetpack"), [
    ("# R35 (release), REVISION: 5.0, GCID: 1, BOARD: t186ref, EABI: aarch64, DATE: x", "35.5.0", "5.x"),
    ("# R32 (release), REVISION: 7.4, GCID: 1, BOARD: t210ref, EABI: aarch64, DATE: x", "32.7.4", "4.x"),
    ("# R99 (release), REVISION: 1.0, GCID: 1", "99.1.0", None),
])
def test_l4t_major_maps_to_jetpack(tmp_path: Path, release: str, l4t: str, jetpack: str | None) -> None:
    info = detect(_board(tmp_path, release, None, None))
    assert info.is_jetson
    assert (info.l4t_release, info.jetpack) == (l4t, jetpack)


def test_release_file_missing_still_detects_from_device_tree(tmp_path: Path) -> None:
    info = detect(_board(tmp_path, None, b"NVIDIA Jetson AGX Thor Developer Kit\0", b"nvidia,tegra264\0"))
    assert info.is_jetson and info.is_thor and info.l4t_release is None
    assert "L4T release unknown" in info.describe()


def test_garbled_release_file_is_not_a_release(tmp_path: Path) -> None:
    info = detect(_board(tmp_path, "garbage\n", b"NVIDIA Jetson AGX Orin\0", b"nvidia,tegra234\0"))
    assert info.is_jetson and info.l4t_release is None and info.jetpack is None


def test_non_jetson_arm_board_is_not_a_jetson(tmp_path: Path) -> None:
    info = detect(_board(tmp_path, None, b"Raspberry Pi 5 Model B Rev 1.0\0", b"raspberrypi,5-model-b\0brcm,bcm2712\0"))
    assert not info.is_jetson and not info.is_thor
    assert info.describe() == "not a Jetson"


def test_empty_root_is_not_a_jetson(tmp_path: Path) -> None:
    info = detect(tmp_path)
    assert not info.is_jetson and info.soc is None


def test_this_machine_is_answered_without_exception() -> None:
    info = detect("/")
    assert isinstance(info.is_jetson, bool)


def test_cli_detect_reports_the_board(tmp_path: Path) -> None:
    root = _board(tmp_path, THOR_RELEASE, b"NVIDIA Jetson AGX Thor Developer Kit\0", b"nvidia,tegra264\0")
    cmd = [sys.executable, "-m", "edge_runtime.cli", "jetson", "detect", "--root", str(root)]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    assert text.strip() == "NVIDIA Jetson AGX Thor Developer Kit, SoC tegra264, L4T 38.2.0, JetPack 7.x"
    data = json.loads(subprocess.run(cmd + ["--json"], capture_output=True, text=True, check=True, timeout=120).stdout)
    assert data["is_thor"] is True and data["jetpack"] == "7.x"
