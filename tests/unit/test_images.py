"""Each image runs what it ships: its code imports only what the image installs.

No Docker here, so each image is rebuilt as a Python world in a subprocess: the standard
library, the distributions its Dockerfile installs (the extras it names, with everything
they require), and the code it copies; every other import fails as it would in the image.
The Triton models and the worker's entry point are imported in that world, and every
distribution they load must be one the image installs. The local stack cannot catch a
gap: its Triton runs on the project's virtualenv, which holds every extra.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DOCKER = Path("deploy/docker")
OUR_PACKAGES = ("stream_app", "serving", "bench")


def _requirements_script():
    spec = importlib.util.spec_from_file_location("requirements", DOCKER / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def installed_closure(requirements: list[str]) -> set[str]:
    """The distributions pip installs for these requirements: each, with the extras
    asked for, and what they require in turn (read from the installed metadata)."""
    found: set[str] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        extras = sorted(requirement.extras)
        if (name, *extras) in found:
            continue
        found.add((name, *extras))
        for line in importlib.metadata.requires(requirement.name) or []:
            needed = Requirement(line)
            environments = [{"extra": e} for e in extras] or [{"extra": ""}]
            if needed.marker is None or any(needed.marker.evaluate(e) for e in environments):
                pending.append(needed)
    return {entry[0] for entry in found}


def top_level_modules(distributions: set[str]) -> set[str]:
    return {
        module
        for module, owners in importlib.metadata.packages_distributions().items()
        if any(canonicalize_name(d) in distributions for d in owners)
    }


# Runs in the subprocess: installs the image's import rules, imports the entry modules,
# prints the top-level modules they loaded.
WORLD = r"""
import importlib, importlib.abc, importlib.machinery, importlib.util, json, sys, sysconfig
allowed, code_root, ours, entries = json.loads(sys.argv[1])
allowed = set(allowed) | set(sys.stdlib_module_names)
stdlib = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")})


def in_stdlib(name, path):  # _sysconfigdata_* and the like are not in stdlib_module_names
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    origin = (spec and spec.origin) or ""
    return origin.startswith(stdlib) and "site-packages" not in origin


class ImageImports(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.partition(".")[0]
        if top in ours:  # only the code the image copies, never the repository's
            spec = importlib.machinery.PathFinder.find_spec(name, path or [code_root])
            if spec is None:
                raise ModuleNotFoundError(f"{name} is not in the image", name=name)
            return spec
        if top not in allowed and not in_stdlib(name, path):
            raise ModuleNotFoundError(f"{top} is not installed in the image", name=name)
        return None

sys.meta_path.insert(0, ImageImports())
before = set(sys.modules)
for entry in entries:
    if entry.endswith(".py"):  # a model.py, loaded by path as Triton loads it
        spec = importlib.util.spec_from_file_location("model", entry)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    else:
        importlib.import_module(entry)


def third_party(name):  # not the standard library, nor a name an extension made up
    module = sys.modules[name]
    where = [getattr(module, "__file__", None) or ""]
    where += list(getattr(module, "__path__", []))
    located = [w for w in where if w]
    inside = [w.startswith(stdlib) and "site-packages" not in w for w in located]
    return bool(located) and not any(inside)


tops = {m.partition(".")[0] for m in set(sys.modules) - before}
print(json.dumps(sorted(t for t in tops if t in sys.modules and third_party(t))))
"""


def imported_in_image(
    allowed: set[str], code_root: Path, entries: list[str], extra_path: list[Path] = ()
) -> set[str]:
    """The top-level modules outside the standard library that importing ``entries``
    loaded, with only ``allowed`` ones (and the stdlib) importable and our code taken from
    ``code_root`` alone."""
    env_path = [str(p) for p in extra_path]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            WORLD,
            json.dumps([sorted(allowed), str(code_root), OUR_PACKAGES, entries]),
        ],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": ":".join(env_path), "PATH": "/usr/bin:/bin"},
        cwd=code_root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return set(json.loads(result.stdout.splitlines()[-1]))


def image_extras(dockerfile: str, pattern: str) -> list[str]:
    (extras,) = re.findall(pattern, (DOCKER / dockerfile).read_text())
    return re.split(r"[ ,]+", extras.strip())


def triton_backend_utils_dir() -> Path:
    """Where tritonserver keeps triton_python_backend_utils (the image has its own copy)."""
    spec = importlib.util.find_spec("pytriton")
    return Path(spec.origin).parent / "tritonserver" / "backends" / "python"


def image_code(tmp_path: Path, dockerfile: str) -> Path:
    """The Dockerfile's COPY of our code into /opt/streamrec, rebuilt under tmp_path."""
    root = tmp_path / "opt-streamrec"
    copies = re.findall(
        r"^COPY (\S+) /opt/streamrec/(\S*)$", (DOCKER / dockerfile).read_text(), re.M
    )
    assert copies, "the Triton image copies no code"
    for source, target in copies:
        destination = root / target
        if Path(source).is_dir():
            shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            destination.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, destination)
    return root


def test_the_triton_models_import_only_what_the_triton_image_installs(tmp_path):
    extras = image_extras("Dockerfile.triton", r"requirements\.py ([a-z ]+?) > /serving\.txt")
    assert extras == ["serving"]
    installs = installed_closure(_requirements_script().requirements(extras))
    code = image_code(tmp_path, "Dockerfile.triton")
    models = sorted(str(p.absolute()) for p in Path("model_repository").glob("*/1/model.py"))
    assert len(models) == 2

    loaded = imported_in_image(
        top_level_modules(installs) | {"triton_python_backend_utils"},
        code,
        models,
        [triton_backend_utils_dir()],
    )

    ours = {"stream_app", "serving", "triton_python_backend_utils"}
    assert ours <= loaded  # the models were really imported, through the image's code
    needed = _distributions_of(loaded - ours)
    assert needed <= installs, needed - installs
    assert {"onnxruntime", "faiss-cpu", "redis", "tokenizers"} <= needed  # what the models use


def test_the_worker_imports_only_what_the_worker_image_installs():
    extras = image_extras("Dockerfile", r'pip install --no-cache-dir "\.\[([a-z,]+)\]"')
    assert extras == ["worker"]
    installs = installed_closure(_requirements_script().requirements(extras))

    loaded = imported_in_image(
        top_level_modules(installs), Path.cwd(), ["stream_app.cli", "stream_app.worker.app"]
    )

    assert {"stream_app", "faust", "tritonclient"} <= loaded
    needed = _distributions_of(loaded - set(OUR_PACKAGES))
    assert needed <= installs, needed - installs
    assert not needed & {"torch", "onnxruntime", "faiss-cpu", "confluent-kafka"}


def test_the_trainer_imports_only_what_the_trainer_image_installs():
    extras = image_extras("Dockerfile.trainer", r'pip install --no-cache-dir "\.\[([a-z,]+)\]"')
    assert extras == ["trainer"]
    installs = installed_closure(_requirements_script().requirements(extras))

    loaded = imported_in_image(
        top_level_modules(installs),
        Path.cwd(),
        ["stream_app.cli", "serving.trainer.service", "serving.trainer.commands"],
    )

    assert {"serving", "torch", "confluent_kafka", "tritonclient"} <= loaded
    needed = _distributions_of(loaded - set(OUR_PACKAGES))
    assert needed <= installs, needed - installs
    assert not needed & {"faust-streaming", "transformers", "faiss-cpu"}


def test_the_image_world_refuses_what_an_image_does_not_install(tmp_path):
    """The check itself: a model that imported a worker-only package would fail here."""
    code = image_code(tmp_path, "Dockerfile.triton")
    serving = top_level_modules(installed_closure(_requirements_script().requirements(["serving"])))
    leaky = tmp_path / "leaky_model.py"
    leaky.write_text("import serving.model_server.ranker\nimport faust\n")
    with pytest.raises(AssertionError, match="faust is not installed in the image"):
        imported_in_image(serving, code, [str(leaky)])
    reaching = tmp_path / "reaching_model.py"
    reaching.write_text("import stream_app.worker.metrics\n")
    with pytest.raises(AssertionError, match="stream_app.worker is not in the image"):
        imported_in_image(serving, code, [str(reaching)])


def _distributions_of(modules: set[str]) -> set[str]:
    owners = importlib.metadata.packages_distributions()
    unknown = sorted(m for m in modules if m not in owners)
    assert not unknown, f"modules no installed distribution provides: {unknown}"
    return {canonicalize_name(d) for m in modules for d in owners[m]}


def test_the_triton_image_keeps_the_stub_where_its_rpath_finds_its_libraries():
    """The 3.11 stub loads its CUDA runtime through an RPATH relative to itself: the image
    must keep that layout (a copy of the stub alone would not start any model)."""
    stub = triton_backend_utils_dir().parents[1] / "python_backend_stubs" / "3.11"
    dynamic = subprocess.run(
        ["readelf", "-d", str(stub / "triton_python_backend_stub")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (rpath,) = re.findall(r"R(?:UN)?PATH\)\s+Library r(?:un)?path: \[(.+)\]", dynamic)
    image_stub = "/opt/pytriton/pytriton/tritonserver/python_backend_stubs/3.11"
    image_libs = os.path.normpath(rpath.replace("$ORIGIN", image_stub))
    text = (DOCKER / "Dockerfile.triton").read_text()
    assert image_libs == "/opt/pytriton/nvidia_pytriton.libs"
    assert f"nvidia_pytriton.libs {image_libs}" in text
    assert f"{image_stub}/triton_python_backend_stub" in text
    assert "/opt/tritonserver/backends/python/triton_python_backend_stub" in text
