"""Install nemotron-edge as a systemd service on a Jetson: user, directories, venv, unit, example config.

    python -m nemotron_jetson.install [--root DIR] [--dry-run] [--no-venv]   (or: nemotron-edge jetson install)

Each step first checks whether it is already done, so running twice changes nothing the second time and
says so. `--dry-run` prints what would be done and touches nothing. With `--root` other than /, the tree
is laid out under that directory and the steps that act on the running system (creating the user,
`systemctl daemon-reload`) are reported and skipped, so the installer can be exercised without privileges.
"""

from __future__ import annotations

import argparse
import grp
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

USER = "nemotron-edge"
# The GPU device nodes belong to these groups on JetPack; the unit also lists them as SupplementaryGroups.
GPU_GROUPS = ("video", "render")
PREFIX = Path("opt/nemotron-edge")
CONFIG_DIR = Path("etc/nemotron-edge")
STATE_DIR = Path("var/lib/nemotron-edge")
UNIT_PATH = Path("etc/systemd/system/nemotron-edge.service")
SOURCE_TREE = Path(__file__).resolve().parent.parent
SHIPPED_DIR = SOURCE_TREE / "systemd"


class InstallError(RuntimeError):
    """A step failed; the message names the step and why."""


@dataclass
class Step:
    """One install action. `done()` says whether the system already has its result."""

    description: str
    done: Callable[[], bool]
    apply: Callable[[], None]
    skip_reason: str | None = None  # set: reported and never applied (e.g. system-wide steps under --root)


@dataclass(frozen=True)
class InstallOptions:
    root: Path = Path("/")
    dry_run: bool = False
    venv: bool = True
    package: str = str(SOURCE_TREE)  # what pip installs into the venv

    @property
    def on_live_system(self) -> bool:
        return self.root.resolve() == Path("/")


def plan(options: InstallOptions) -> list[Step]:
    root = options.root
    steps = [_user_step(options)]
    for directory, mode in ((PREFIX, 0o755), (CONFIG_DIR, 0o755), (STATE_DIR, 0o750)):
        steps.append(_directory_step(root / directory, mode))
    if options.venv:
        steps.extend(_venv_steps(root / PREFIX / "venv", options.package))
    else:
        steps.append(Step(f"create venv {root / PREFIX / 'venv'}", lambda: False, _nothing, "--no-venv"))
    unit_step = _copy_step(_shipped("nemotron-edge.service"), root / UNIT_PATH, overwrite=True)
    steps.append(unit_step)
    steps.append(_copy_step(_shipped("config.toml"), root / CONFIG_DIR / "config.toml", overwrite=False))
    reload_skip = None if options.on_live_system else "--root is not /"
    # Reload only when the unit file is new or changed; `done` is evaluated before the unit step runs.
    unit_was_current = unit_step.done()
    steps.append(Step("systemctl daemon-reload", lambda: unit_was_current, _daemon_reload, reload_skip))
    return steps


def run(options: InstallOptions, out: Callable[[str], None] = print) -> int:
    """Carries out (or with dry_run, lists) the plan; returns the number of changes made or planned."""
    changes = 0
    for step in plan(options):
        if step.skip_reason:
            out(f"skip: {step.description} ({step.skip_reason})")
        elif step.done():
            out(f"unchanged: {step.description}")
        elif options.dry_run:
            out(f"would: {step.description}")
            changes += 1
        else:
            out(f"doing: {step.description}")
            step.apply()
            changes += 1
    if changes == 0:
        out("nothing to do: everything unchanged")
    elif options.dry_run:
        out(f"dry run: {changes} change(s) would be made, none made")
    else:
        out(f"done: {changes} change(s) made")
    if options.on_live_system and not options.dry_run:
        out("next: `nemotron-edge jetson bundle install BUNDLE`, set "
            "[model] bundle = \"/var/lib/nemotron-edge/current\" in /etc/nemotron-edge/config.toml, then "
            "`systemctl enable --now nemotron-edge`")
    return changes


def _nothing() -> None:
    """The apply of a step that is only ever reported."""


def _shipped(name: str) -> Path:
    path = SHIPPED_DIR / name
    if not path.is_file():
        raise InstallError(f"shipped file {path} is missing: run the installer from a nemotron-edge source tree")
    return path


def _user_step(options: InstallOptions) -> Step:
    groups = ",".join(g for g in GPU_GROUPS if _group_exists(g))
    description = f"create system user {USER} (home {Path('/') / STATE_DIR}, groups {groups or 'none'})"
    skip = None if options.on_live_system else "--root is not /; the live system's users are not touched"
    return Step(description, lambda: _user_exists(USER), lambda: _create_user(groups), skip)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _create_user(groups: str) -> None:
    command = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(Path("/") / STATE_DIR),
               "--shell", "/usr/sbin/nologin"]
    if groups:
        command += ["--groups", groups]
    _check_call(command + [USER])


def _directory_step(path: Path, mode: int) -> Step:
    def apply() -> None:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)

    return Step(f"create directory {path} (mode {mode:o})", path.is_dir, apply)


def _venv_steps(venv: Path, package: str) -> list[Step]:
    python = venv / "bin" / "python"
    entry_point = venv / "bin" / "nemotron-edge"
    # --system-site-packages: JetPack's TensorRT and onnxruntime-gpu live in the system Python.
    create = Step(
        f"create venv {venv} (--system-site-packages)",
        python.exists,
        lambda: _check_call([sys.executable, "-m", "venv", "--system-site-packages", str(venv)]),
    )
    install = Step(
        f"pip install {package} into {venv}",
        entry_point.exists,
        lambda: _check_call([str(python), "-m", "pip", "install", package]),
    )
    return [create, install]


def _copy_step(source: Path, target: Path, overwrite: bool) -> Step:
    def done() -> bool:
        if not target.exists():
            return False
        # An existing config is the operator's: never replaced, even when it differs from the example.
        return not overwrite or target.read_bytes() == source.read_bytes()

    def apply() -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        target.chmod(0o644)

    verb = "install" if overwrite else "install (only if absent)"
    return Step(f"{verb} {target} from {source.name}", done, apply)


def _daemon_reload() -> None:
    _check_call(["systemctl", "daemon-reload"])


def _check_call(command: list[str]) -> None:
    try:
        subprocess.run(command, check=True)
    except FileNotFoundError:
        raise InstallError(f"{command[0]} not found: cannot run `{' '.join(command)}`") from None
    except subprocess.CalledProcessError as e:
        raise InstallError(f"`{' '.join(command)}` failed with exit code {e.returncode}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=Path("/"), help="install under this directory (default: /)")
    parser.add_argument("--dry-run", action="store_true", help="print every action, change nothing")
    parser.add_argument("--no-venv", dest="venv", action="store_false",
                        help="skip creating the venv and installing the package into it")
    parser.add_argument("--package", default=str(SOURCE_TREE),
                        help="what to pip install into the venv (default: this source tree)")


def options_from_args(args: argparse.Namespace) -> InstallOptions:
    return InstallOptions(root=args.root, dry_run=args.dry_run, venv=args.venv, package=args.package)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nemotron_jetson.install", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    try:
        run(options_from_args(args))
    except InstallError as e:
        print(f"install failed: {e}", file=sys.stderr)
        return 1
    except PermissionError as e:
        print(f"install failed: {e.filename}: permission denied (run as root, or use --root DIR)", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"install failed: {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
