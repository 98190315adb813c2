"""The CPU patches refuse to apply to code they were not written against, and stay scoped."""
import inspect
import sys
import textwrap

import pytest
import torch

import megatron_patches
from megatron_patches import PatchMismatchError, tensor_cuda_calls, tensor_type_checks, torch_adam_step
from megatron_patches._core import check_megatron_version, rewrite_function


def test_apply_is_idempotent_and_scoped_to_megatron():
    assert megatron_patches.apply() is True
    assert megatron_patches.apply() is True
    import megatron.core.optimizer.clip_grads as clip_grads

    assert clip_grads.torch is not torch  # megatron sees the CPU proxy ...
    assert clip_grads.torch.cuda.current_device() == torch.device("cpu")
    assert torch.cuda.current_device is not clip_grads.torch.cuda.current_device  # ... torch does not
    assert clip_grads.torch.zeros(2, device="cuda").device.type == "cpu"


def test_patched_function_keeps_identity_and_clips_cpu_grads():
    megatron_patches.apply()
    from megatron.core.optimizer import optimizer
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    assert optimizer.clip_grad_by_total_norm_fp32 is clip_grad_by_total_norm_fp32
    param = torch.nn.Parameter(torch.ones(4))
    param.grad = torch.full((4,), 2.0)  # norm 4 -> clipped to max_norm 1
    clip_grad_by_total_norm_fp32([param], max_norm=1.0, total_norm=4.0)
    torch.testing.assert_close(param.grad, torch.full((4,), 2.0 / (4.0 + 1e-6)))


ALL_REWRITES = tensor_type_checks.REWRITES + tensor_cuda_calls.REWRITES + torch_adam_step.REWRITES


@pytest.mark.parametrize("module_name,qualname,replacements", ALL_REWRITES,
                         ids=[qualname for _, qualname, _ in ALL_REWRITES])
def test_altered_upstream_source_raises(module_name, qualname, replacements):
    """Feed each patch a copy of its target with the expected snippet changed, as a new release would."""
    import importlib

    module = importlib.import_module(module_name)
    owner = module
    for part in qualname.split("."):
        owner = getattr(owner, part)
    source = inspect.unwrap(owner).__superrl_original_source__
    old = replacements[0][0]
    altered = source.replace(old, "superrl_upstream_changed_this_line()\n" if old.endswith("\n") else
                             "superrl_upstream_changed_this_line()")
    assert altered != source
    with pytest.raises(PatchMismatchError, match="expected code not found, megatron-core changed"):
        rewrite_function(module_name, qualname, replacements, source=altered)


def test_rewrite_of_a_fresh_module(tmp_path, monkeypatch):
    (tmp_path / "fake_upstream.py").write_text(textwrap.dedent("""
        class Base:
            def f(self):
                return 1

        class Child(Base):
            def f(self):
                return super().f() + 10
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import fake_upstream

    func = rewrite_function("fake_upstream", "Child.f", [("+ 10", "+ 20")])
    assert fake_upstream.Child().f() == 21 and func is fake_upstream.Child.f
    with pytest.raises(PatchMismatchError, match=r"fake_upstream\.Base\.f"):
        rewrite_function("fake_upstream", "Base.f", [("return 2", "return 3")])
    sys.modules.pop("fake_upstream")


def test_version_gate(monkeypatch):
    from megatron.core import package_info

    assert check_megatron_version() == "0.16.1"
    monkeypatch.setattr(package_info, "__version__", "0.17.0")
    with pytest.raises(PatchMismatchError, match="supports megatron-core 0.16.1, found 0.17.0"):
        check_megatron_version()


@pytest.fixture
def adam_fix_calls(monkeypatch):
    """Records each application of the torch-Adam fix (the real rewrite still runs)."""
    calls = []
    real_apply = torch_adam_step.apply
    monkeypatch.setattr(torch_adam_step, "apply", lambda: (calls.append(1), real_apply()))
    return calls


@pytest.mark.parametrize("cuda", [False, True], ids=["cpu", "cuda"])
def test_torch_adam_fix_applies_wherever_megatron_uses_torch_adam(monkeypatch, adam_fix_calls, cuda):
    """The resume bug is torch Adam's under megatron, not CPU's: the fix follows megatron's own
    fallback flag, whatever torch.cuda.is_available() says; the CPU patches follow CUDA."""
    from megatron.core import optimizer
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    assert optimizer.USING_PYTORCH_OPTIMIZER  # no TE/Apex here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert megatron_patches.apply() is (not cuda)
    assert adam_fix_calls == [1]
    patched = inspect.unwrap(DistributedOptimizer.load_state_dict).__code__
    assert patched.co_filename.startswith("<megatron_patches:")


def test_torch_adam_fix_skipped_with_fused_adam(monkeypatch, adam_fix_calls):
    """With TE's or Apex's FusedAdam megatron never builds torch Adam: nothing to fix, and no
    version gate to trip (the fix is the only patch a GPU run could need)."""
    from megatron.core import optimizer, package_info

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(optimizer, "USING_PYTORCH_OPTIMIZER", False)
    monkeypatch.setattr(package_info, "__version__", "0.17.0")
    assert megatron_patches.apply() is False
    assert adam_fix_calls == []


def test_torch_adam_fix_keeps_the_version_gate(monkeypatch, adam_fix_calls):
    from megatron.core import package_info

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(package_info, "__version__", "0.17.0")
    with pytest.raises(PatchMismatchError, match="supports megatron-core 0.16.1, found 0.17.0"):
        megatron_patches.apply()
    assert adam_fix_calls == []
