"""pyproject.toml's ranges, the lock ./run.sh installs and the oldest tested set agree."""

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parent.parent


def _pins(path: Path) -> dict[str, Version]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version.strip())
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_every_locked_version_satisfies_the_declared_range():
    lock = _pins(ROOT / "requirements" / "lock.txt")
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{name} is declared but not locked"
        locked = lock[name]
        assert requirement.specifier.contains(locked), f"locked {name}=={locked} outside {requirement}"


def test_lower_bounds_are_the_oldest_tested_versions():
    oldest = _pins(ROOT / "requirements" / "oldest.txt")
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in map(Requirement, runtime):
        name = canonicalize_name(requirement.name)
        lower = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        assert lower == [oldest[name]], f"{requirement}: lower bound should be the tested {oldest.get(name)}"
        capped = any(s.operator in ("<", "<=", "==") for s in requirement.specifier)
        assert not capped, f"{requirement} has an upper bound"
