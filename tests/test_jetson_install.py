"""The installer against a temporary root: dry run touches nothing, a real run lays out the tree, and a
second run changes nothing. The venv/pip step is skipped (--no-venv) except in one test that builds a
venv without pip, to show the --system-site-packages venv is really created."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nemotron_jetson.install import InstallOptions, plan, run

REPO = Path(__file__).resolve().parent.parent
EXPECTED_FILES = {
    "etc/systemd/system/nemotron-edge.service": REPO / "systemd/nemotron-edge.service",
    "etc/nemotron-edge/config.toml": REPO / "systemd/config.toml",
}
EXPECTED_DIRS = ("opt/nemotron-edge", "etc/nemotron-edge", "var/lib/nemotron-edge")


def _install(root: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nemotron_jetson.install", "--root", str(root), "--no-venv", *flags],
        capture_output=True, text=True, timeout=120,
    )


def _tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def test_dry_run_prints_every_action_and_creates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = _install(root, "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for d in EXPECTED_DIRS:
        assert f"would: create directory {root / d}" in out
    for f in EXPECTED_FILES:
        assert str(root / f) in out
    assert "skip: create system user nemotron-edge" in out
    assert "skip: systemctl daemon-reload (--root is not /)" in out
    assert "skip: create venv" in out and "--no-venv" in out
    assert "5 change(s) would be made, none made" in out
    assert not root.exists()


def test_real_run_creates_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = _install(root)
    assert result.returncode == 0, result.stderr
    for d in EXPECTED_DIRS:
        assert (root / d).is_dir(), d
    assert (root / "var/lib/nemotron-edge").stat().st_mode & 0o777 == 0o750
    for target, source in EXPECTED_FILES.items():
        assert (root / target).read_bytes() == source.read_bytes(), target
    assert "done: 5 change(s) made" in result.stdout


def test_second_run_changes_nothing_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert _install(root).returncode == 0
    before = _tree(root)
    second = _install(root)
    assert second.returncode == 0, second.stderr
    assert _tree(root) == before
    assert "nothing to do: everything unchanged" in second.stdout
    assert second.stdout.count("unchanged: ") == 5
    assert "doing:" not in second.stdout


def test_existing_config_is_never_overwritten_but_a_stale_unit_is(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/nemotron-edge").mkdir(parents=True)
    (root / "etc/nemotron-edge/config.toml").write_text("[server]\nmax_queue = 3\n")
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/nemotron-edge.service").write_text("[Service]\nExecStart=/old\n")
    result = _install(root)
    assert result.returncode == 0, result.stderr
    assert (root / "etc/nemotron-edge/config.toml").read_text() == "[server]\nmax_queue = 3\n"
    assert (root / "etc/systemd/system/nemotron-edge.service").read_bytes() == EXPECTED_FILES[
        "etc/systemd/system/nemotron-edge.service"].read_bytes()
    assert "unchanged: install (only if absent)" in result.stdout


def test_unwritable_root_fails_with_a_message(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = _install(blocker / "root")
    assert result.returncode == 1
    assert "install failed" in result.stderr and "Not a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_venv_step_creates_a_system_site_packages_venv(tmp_path: Path) -> None:
    root = tmp_path / "root"
    steps = plan(InstallOptions(root=root, venv=True, package=str(REPO)))
    create = next(s for s in steps if s.description.startswith("create venv"))
    assert not create.done()
    # The real step, minus pip (which would need the network): build the venv the way the step does.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(root / "opt/nemotron-edge/venv")], check=True, timeout=120)
    assert create.done()
    cfg = (root / "opt/nemotron-edge/venv/pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in cfg


def test_run_reports_through_the_given_output(tmp_path: Path) -> None:
    lines: list[str] = []
    changes = run(InstallOptions(root=tmp_path / "r", dry_run=True, venv=False), out=lines.append)
    assert changes == 5
    assert lines[-1] == "dry run: 5 change(s) would be made, none made"


def test_cli_jetson_install_is_the_same_installer(tmp_path: Path) -> None:
    root = tmp_path / "root"
    cmd = [sys.executable, "-m", "edge_runtime.cli", "jetson", "install", "--root", str(root), "--no-venv"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert (root / "etc/systemd/system/nemotron-edge.service").is_file()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert "nothing to do: everything unchanged" in second.stdout
