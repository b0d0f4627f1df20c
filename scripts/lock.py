"""Write constraints.txt: the exact version of every package the project installs (its dependencies, the dev
extra's and all that they pull in), as pip resolves pyproject.toml's ranges today.

    python scripts/lock.py        # or `make lock`, after changing a dependency in pyproject.toml

pyproject.toml keeps ranges (the project is a library too); constraints.txt makes each install of one commit the
same: the images (`pip install -c constraints.txt`) and the virtual environment scripts/stack.sh makes. A
constraint only limits a package's version, it installs nothing, so the CUDA packages listed for the trainer's
PyTorch stay out of an image with the CPU-only build. tests/deploy/test_containers.py checks that every
dependency is pinned here within pyproject.toml's range.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = """\
# The exact versions every install of this commit uses (pip install -c constraints.txt): written by
# scripts/lock.py (`make lock`) from pyproject.toml's ranges; do not edit by hand. Python 3.11, Linux x86_64.
"""


def resolved() -> list[tuple[str, str]]:
    """(name, version) of everything `pip install .[dev]` would install into an empty environment."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        subprocess.run([*pip, "--report", str(report), f"{ROOT}[dev]"], check=True)
        installs = json.loads(report.read_text())["install"]
    return sorted(
        ((i["metadata"]["name"], i["metadata"]["version"]) for i in installs if i["metadata"]["name"] != "mnist-stack"),
        key=lambda pin: pin[0].lower(),
    )


def main() -> int:
    pins = resolved()
    (ROOT / "constraints.txt").write_text(HEADER + "".join(f"{name}=={version}\n" for name, version in pins))
    print(f"constraints.txt: {len(pins)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
