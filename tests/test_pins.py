"""constraints.txt is the one lock: every package the project names is pinned there, exactly, and the
environment the tests run in, the server image and the operator image are all installed from it."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

CONSTRAINTS = ROOT / "constraints.txt"
DOCKERFILES = ("server_image/Dockerfile", "operator/Dockerfile")


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version and re.fullmatch(r"[A-Za-z0-9._+!-]+", version), f"not an exact pin: {line!r}"
        pins[canonicalize_name(name)] = version
    return pins


def _named_by_pyproject() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    return {canonicalize_name(Requirement(text).name) for text in requirements}


def test_every_package_pyproject_names_is_pinned_exactly() -> None:
    missing = _named_by_pyproject() - _pins().keys()
    assert not missing, f"add to constraints.txt (make lock): {sorted(missing)}"


def test_the_pins_allow_what_pyproject_asks_for() -> None:
    pins = _pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"]) + [t for e in project["optional-dependencies"].values() for t in e]
    for text in texts:
        requirement = Requirement(text)
        version = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version, prereleases=True), f"{version} is outside {text!r}"


def test_the_environment_is_the_locked_one() -> None:
    """A stale .venv (installed before the lock changed) would test other versions than CI's."""
    wrong = {}
    for name, version in _pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # platform-specific pins (uvloop) or a package only an image installs
        if installed != version:
            wrong[name] = f"installed {installed}, pinned {version}"
    assert not wrong, f"run 'make install': {wrong}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_the_images_install_with_the_lock(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    assert re.search(r"^COPY [^\n]*\bconstraints\.txt\b", text, re.M), "the build stage must copy the lock"
    ignore = (ROOT / f"{dockerfile}.dockerignore").read_text().splitlines()
    assert "!constraints.txt" in ignore, "the dockerignore must let the lock into the build context"
