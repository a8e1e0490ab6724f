"""Mutation check: apply each one-line mutation of `mutations.toml` to a scratch copy of the repository,
run only the tests expected to catch it, and print caught / missed.

    .venv/bin/python tools/mutations/run.py                 # every mutation
    .venv/bin/python tools/mutations/run.py planar-inverse-frozen-params actnorm-pixels
    .venv/bin/python tools/mutations/run.py --list

The working tree is never modified: its tracked and untracked (not ignored) files are copied to a
temporary directory, each mutation is applied there, its tests run with the copy first on the import
path, and the file is restored before the next mutation. A mutation whose line is not found exactly
once is reported as "stale" (the code moved: update the list). Exit status 1 if any mutation was
missed or stale. docs/development.md says when to run it and how to add a mutation.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIST = Path(__file__).with_name("mutations.toml")


def load(path: Path = LIST) -> list[dict]:
    """The mutations of `path`: name, file, find, replace, tests (pytest arguments), why."""
    mutations = tomllib.loads(path.read_text())["mutation"]
    for m in mutations:
        missing = {"name", "file", "find", "replace", "tests"} - m.keys()
        if missing:
            raise SystemExit(f"{path}: mutation {m.get('name', '?')} lacks {sorted(missing)}")
    names = [m["name"] for m in mutations]
    if len(set(names)) != len(names):
        raise SystemExit(f"{path}: duplicate mutation names")
    return mutations


def copy_tree(source: Path, target: Path) -> None:
    """Copy the files git would show (tracked, and untracked but not ignored) from `source` to `target`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=source,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        path = source / os.fsdecode(name)
        if path.is_file():
            destination = target / os.fsdecode(name)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)


def apply(copy: Path, mutation: dict) -> str | None:
    """Apply `mutation` in `copy` and return the original text, or None when its line is not found
    exactly once."""
    path = copy / mutation["file"]
    if not path.is_file():
        return None
    text = path.read_text()
    if text.count(mutation["find"]) != 1:
        return None
    path.write_text(text.replace(mutation["find"], mutation["replace"]))
    return text


def run_tests(copy: Path, tests: list[str], env: dict, timeout: float) -> tuple[int, str]:
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-n", "0", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timeout"
    return done.returncode, done.stdout + done.stderr


def first_failure(output: str) -> str:
    """The first "FAILED ..." line of pytest's summary, shortened."""
    for line in output.splitlines():
        if line.startswith(("FAILED", "ERROR")):
            return line[:160]
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per mutation's tests")
    args = parser.parse_args(argv)
    mutations = load()
    if args.list:
        for m in mutations:
            print(f"{m['name']:36s} {m['file']}: {m.get('why', '')}")
        return 0
    unknown = set(args.names) - {m["name"] for m in mutations}
    if unknown:
        parser.error(f"unknown mutation(s): {sorted(unknown)}")
    chosen = [m for m in mutations if not args.names or m["name"] in args.names]
    results = []
    with tempfile.TemporaryDirectory(prefix="jaxflows-mutations-") as scratch:
        copy = Path(scratch) / "repo"
        copy_tree(ROOT, copy)
        env = {
            **os.environ,
            "PYTHONPATH": str(copy),  # the copy's jaxflows, not the installed (editable) one
            # unchanged programs compile once across mutations (a mutated program has another key)
            "JAXFLOWS_TEST_COMPILATION_CACHE": str(Path(scratch) / "compilation-cache"),
        }
        (Path(scratch) / "compilation-cache").mkdir()
        where = subprocess.run(
            [sys.executable, "-c", "import jaxflows; print(jaxflows.__file__)"],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not where.startswith(str(copy)):
            raise SystemExit(f"the scratch copy's tests would import jaxflows from {where}, not the copy")
        for m in chosen:
            start = time.perf_counter()
            original = apply(copy, m)
            if original is None:
                status, detail = "stale", f"line not found exactly once in {m['file']}"
            else:
                try:
                    code, output = run_tests(copy, m["tests"], env, args.timeout)
                finally:
                    (copy / m["file"]).write_text(original)
                if code == 1:
                    status, detail = "caught", first_failure(output)
                elif code == 0:
                    status, detail = "MISSED", "every selected test passed"
                else:
                    status, detail = "error", f"pytest exit status {code}: {output.strip().splitlines()[-1:]}"
            results.append((m["name"], status))
            print(f"{status:7s} {m['name']:36s} {time.perf_counter() - start:6.1f} s  {detail}", flush=True)
    caught = sum(status == "caught" for _, status in results)
    print(f"{caught} of {len(results)} mutations caught")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
