"""The wheel built from the tree: every package and data file in it, a quiet setuptools, and an install that
works on its own. pyproject.toml lists its packages by hand, so a package folder it forgets would silently
be left out of the wheel; the packages expected here are found by walking the tree, not read from pyproject.

One wheel build (in a copy of the checkout's files, so build/ and *.egg-info never land in the checkout) and
one venv serve every test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Source folder -> the import name it installs as (pyproject's package-dir).
PACKAGE_ROOTS = {"edge_runtime": "edge_runtime", "export": "nemotron_export", "jetson": "nemotron_jetson"}
# Data files the code reads at run time, as globs in the source tree.
DATA_FILES = ("export/templates/*.jinja", "export/corpus/*.txt", "edge_runtime/demo_bundle/*", "edge_runtime/api/*.pyi")
# What setuptools says when pyproject's license is not an SPDX string, or when it finds a folder it would
# import but was not told about (its files then only reach the wheel by accident of package-data).
SETUPTOOLS_WARNINGS = ("project.license", "absent from the `packages` configuration")

IMPORT_CHECK = """
import json, sysconfig
import edge_runtime.bundle.demo as demo
print(json.dumps({"module": demo.__file__, "bundle": str(demo.DEMO_BUNDLE),
                  "site": sysconfig.get_paths()["purelib"]}))
"""


@dataclass(frozen=True)
class Build:
    source: Path  # the copy the wheel was built from
    wheel: Path
    output: str  # pip's and setuptools' output, verbose


def wheel_name(source_path: Path) -> str:
    """Where a file under one of the package roots lies in the wheel."""
    root, *rest = source_path.parts
    return "/".join([PACKAGE_ROOTS[root], *rest])


def copy_checkout(dest: Path) -> None:
    """The checkout's files as git sees them: tracked ones and new ones not ignored (a package being added)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout to know which files belong to the tree")
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, capture_output=True, check=True).stdout.decode()
    for name in filter(None, listing.split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is simply not there
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    source, dist = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    copy_checkout(source)
    # -v: without it pip hides what the build backend prints while building, the packages warning included.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "--no-cache-dir",
         "--disable-pip-version-check", "-w", str(dist), "."],
        cwd=source, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert done.returncode == 0, done.stdout[-5000:]
    (wheel,) = dist.glob("*.whl")
    return Build(source, wheel, done.stdout)


def test_build_prints_no_setuptools_warnings(build: Build) -> None:
    warned = [line.strip() for line in build.output.splitlines() if any(w in line for w in SETUPTOOLS_WARNINGS)]
    assert not warned, "\n".join(warned)


def test_wheel_holds_every_package_and_data_file(build: Build) -> None:
    packages = sorted(init.parent.relative_to(build.source)
                      for root in PACKAGE_ROOTS for init in (build.source / root).rglob("__init__.py"))
    # The walk found the tree's packages (nested ones too), not just the three roots.
    assert {Path("edge_runtime/engine"), Path("export"), Path("jetson")} <= set(packages)
    expected = {wheel_name(module.relative_to(build.source))
                for package in packages for module in (build.source / package).glob("*.py")}
    data = [path for pattern in DATA_FILES for path in build.source.glob(pattern) if path.is_file()]
    assert {path.suffix for path in data} >= {".jinja", ".txt", ".json", ".onnx", ".pyi"}
    expected |= {wheel_name(path.relative_to(build.source)) for path in data}
    names = set(zipfile.ZipFile(build.wheel).namelist())
    assert sorted(expected - names) == []


def test_wheel_installs_into_a_fresh_venv_and_finds_its_demo_bundle(build: Build, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # The import checked needs nothing outside the standard library, so a bare venv is enough; pip here
    # installs into it (--python) rather than bootstrapping a pip of its own.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--disable-pip-version-check", "--quiet", str(build.wheel)], check=True)
    # -I: no PYTHONPATH, no user site, no current directory on the path; only the venv can provide it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(python), "-I", "-c", IMPORT_CHECK], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    site = Path(found["site"]).resolve()
    assert site.is_relative_to(venv.resolve())
    assert Path(found["module"]).resolve().is_relative_to(site)
    bundle = Path(found["bundle"])
    assert bundle.resolve().is_relative_to(site)
    assert (bundle / "manifest.json").is_file()
    assert (venv / "bin" / "nemotron-edge").is_file()  # [project.scripts]
