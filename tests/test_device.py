"""Tests for course.device: picking the device, Triton's interpreter switch, seeding."""

import os
import random
import subprocess
import sys
import types
import warnings
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch

from course.device import (
    configure_triton,
    describe_device,
    get_device,
    has_gpu,
    seed_everything,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

needs_cpu_only = pytest.mark.skipif(has_gpu(), reason="checks the CPU-only behaviour")
needs_triton = pytest.mark.skipif(find_spec("triton") is None, reason="triton is not installed")


def run_python(code: str, **env_overrides: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter from the repo root, as on a machine without a
    GPU and with TRITON_INTERPRET unset."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # hides any GPU from torch
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def triton_interpret_unset(monkeypatch):
    # setenv first, so that monkeypatch restores the original value afterwards
    # whatever configure_triton writes.
    monkeypatch.setenv("TRITON_INTERPRET", "placeholder")
    monkeypatch.delenv("TRITON_INTERPRET")


@needs_cpu_only
def test_get_device_is_cpu_without_gpu():
    assert has_gpu() is False
    assert get_device() == torch.device("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu(), reason="needs a CUDA GPU")
def test_get_device_is_cuda_with_gpu():
    assert get_device() == torch.device("cuda")
    assert describe_device().startswith("CUDA: ")


@needs_triton
@pytest.mark.parametrize(
    "user_value, expected",
    [(None, "1"), ("0", "0")],
    ids=["unset: interpreter", "user's value kept"],
)
def test_importing_course_before_triton(user_value, expected):
    env = {"PYTHONWARNINGS": "always"}
    if user_value is not None:
        env["TRITON_INTERPRET"] = user_value
    result = run_python("import course, os, triton; print(os.environ['TRITON_INTERPRET'])", **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected
    assert "Import course before triton" not in result.stderr


@needs_triton
def test_importing_triton_before_course_warns():
    result = run_python("import triton, course", PYTHONWARNINGS="always")
    assert result.returncode == 0, result.stderr
    assert "Import course before triton" in result.stderr


def test_configure_triton_sets_interpreter_mode_without_gpu(
    no_gpu, triton_interpret_unset, monkeypatch
):
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        configure_triton()
    assert os.environ["TRITON_INTERPRET"] == "1"


def test_configure_triton_warns_when_triton_came_first(no_gpu, triton_interpret_unset, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))
    with pytest.warns(UserWarning, match="Import course before triton"):
        configure_triton()
    assert os.environ["TRITON_INTERPRET"] == "1"


def test_configure_triton_leaves_gpu_machines_compiled(triton_interpret_unset, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    configure_triton()
    assert "TRITON_INTERPRET" not in os.environ


def test_configure_triton_never_overwrites_the_user(no_gpu, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        configure_triton()
    assert os.environ["TRITON_INTERPRET"] == "0"


@needs_triton
def test_describe_device_on_cpu(no_gpu, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    description = describe_device()
    assert description == (
        f"CPU ({torch.get_num_threads()} threads), "
        "Triton kernels (days 7 and 9) run in Triton's CPU interpreter"
    )


def test_describe_device_is_one_line():
    description = describe_device()
    assert isinstance(description, str)
    assert description and "\n" not in description


def draw_from_every_library() -> tuple:
    return random.random(), np.random.rand(3).tolist(), torch.randn(3).tolist()


def test_seed_everything_makes_every_library_repeat():
    seed_everything(123)
    first = draw_from_every_library()
    seed_everything(123)
    assert draw_from_every_library() == first
    seed_everything(124)
    assert draw_from_every_library() != first


def test_seed_everything_returns_a_seeded_cpu_generator():
    generator = seed_everything(7)
    assert isinstance(generator, torch.Generator)
    assert generator.device == torch.device("cpu")
    assert generator.initial_seed() == 7
    expected = torch.randn(4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.randn(4, generator=generator), expected)


def test_seed_everything_defaults_to_zero():
    assert seed_everything().initial_seed() == 0


def test_seed_everything_accepts_numpy_integers():
    assert seed_everything(np.int64(5)).initial_seed() == 5


@pytest.mark.parametrize("bad_seed", [1.5, "0", None, True])
def test_seed_everything_rejects_non_int_seeds(bad_seed):
    with pytest.raises(TypeError, match="seed must be an int, got"):
        seed_everything(bad_seed)


@pytest.mark.parametrize("bad_seed", [-1, 2**32])
def test_seed_everything_rejects_seeds_numpy_cannot_take(bad_seed):
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*32\), got"):
        seed_everything(bad_seed)


def test_every_module_that_imports_triton_imports_course_first():
    """Without a GPU, importing course puts Triton in interpreter mode, which triton reads when
    it is imported; a formatter's import sorting puts `course` (first party) after `triton`, so
    each such file keeps `import course` above an `# isort: split`."""
    import subprocess

    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()

    def first(lines, prefix):
        return next((i for i, line in enumerate(lines) if line.startswith(prefix)), None)

    wrong = []
    for name in tracked:
        lines = (REPO_ROOT / name).read_text().splitlines()
        triton_at = first(lines, "import triton")
        if triton_at is None or name.startswith("course/"):  # inside the package, course runs first
            continue
        course_at = first(lines, "import course")
        if course_at is None or course_at > triton_at:
            wrong.append(name)
    assert not wrong, wrong
