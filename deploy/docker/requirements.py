"""Print the requirements an image installs, read from pyproject.toml (one per line).

    python requirements.py serving            # the core's dependencies + the serving extra
    python requirements.py dev --only nvidia-pytriton

Each image's Python dependencies are declared once, as an extra in pyproject.toml; the
Dockerfiles install what this prints, and tests/unit/test_images.py checks that an image's
requirements cover every distribution its code imports. Standard library only.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def requirements(extras: list[str], pyproject: Path = PYPROJECT) -> list[str]:
    """The project's own dependencies, then each extra's, as pyproject.toml writes them."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project["optional-dependencies"]
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"no extra {', '.join(unknown)} in {pyproject}: {', '.join(optional)}")
    return list(project["dependencies"]) + [r for e in extras for r in optional[e]]


def distribution(requirement: str) -> str:
    """The distribution a requirement names, normalised ("tritonclient[grpc]==2": tritonclient)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    if name is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="+")
    parser.add_argument("--only", help="print only the requirement of this distribution")
    args = parser.parse_args(argv)
    found = requirements(args.extras)
    if args.only:
        found = [r for r in found if distribution(r) == distribution(args.only)]
        if not found:
            raise SystemExit(f"{args.only} is not among the requirements of {args.extras}")
        found = found[:1]
    print("\n".join(found))


if __name__ == "__main__":
    main(sys.argv[1:])
