"""constraints-gpu.txt and setup.py's `gpu` extra name the same versions (text parsing only)."""
import ast
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
# Transformer Engine's published extras (its METADATA): each installs one component at TE's version.
TE_EXTRA_PACKAGES = {"core_cu13": "transformer-engine-cu13", "core_cu12": "transformer-engine-cu12",
                     "pytorch": "transformer-engine-torch"}


def constraints(name: str) -> dict:
    lines = (REPO / name).read_text().splitlines()
    reqs = [Requirement(line.split("#")[0]) for line in lines if line.split("#")[0].strip()]
    return {canonicalize_name(r.name): r for r in reqs}


def setup_requirements() -> dict:
    """install_requires and extras_require of setup.py's setup(...) call, without running it."""
    call = next(node for node in ast.walk(ast.parse((REPO / "setup.py").read_text()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup")
    kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords
              if kw.arg in ("install_requires", "extras_require")}
    return {"install": [Requirement(r) for r in kwargs["install_requires"]],
            **{extra: [Requirement(r) for r in reqs] for extra, reqs in kwargs["extras_require"].items()}}


def pinned_version(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req} is not pinned with =="
    return spec.version


def test_gpu_extra_pins_what_constraints_gpu_pins():
    gpu = constraints("constraints-gpu.txt")
    extra = setup_requirements()["gpu"]
    assert {canonicalize_name(r.name) for r in extra} == {"transformer-engine", "vllm"}
    for req in extra:
        assert pinned_version(req) == pinned_version(gpu[canonicalize_name(req.name)]), req


def test_transformer_engine_components_pinned_at_its_version():
    gpu = constraints("constraints-gpu.txt")
    (te,) = [r for r in setup_requirements()["gpu"] if canonicalize_name(r.name) == "transformer-engine"]
    assert te.extras, "name TE's core (CUDA) and pytorch components"
    for extra in te.extras:
        assert pinned_version(gpu[TE_EXTRA_PACKAGES[extra]]) == pinned_version(te), extra


def test_constraints_carry_no_extras_and_torch_is_pinned_like_the_cpu_one():
    """pip rejects extras in constraints; one torch for the CPU test suite and the GPU runs."""
    gpu, cpu = constraints("constraints-gpu.txt"), constraints("constraints.txt")
    assert all(not r.extras for r in gpu.values())
    assert pinned_version(gpu["torch"]) == pinned_version(cpu["torch"])


def test_install_requires_admit_the_gpu_pins():
    gpu = constraints("constraints-gpu.txt")
    for req in setup_requirements()["install"]:
        name = canonicalize_name(req.name)
        if name not in gpu:
            continue
        pin = gpu[name].specifier
        if any(s.operator == "==" for s in pin):
            assert req.specifier.contains(next(iter(pin)).version), f"{req} excludes {gpu[name]}"
        else:
            assert str(req.specifier) == str(pin), f"{req} vs {gpu[name]}"
