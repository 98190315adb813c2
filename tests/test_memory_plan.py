"""The memory plan (superrl/trainer/memory_plan.py) against independent counts: the tensors a real
megatron model, DDP grad buffer and DistributedOptimizer hold after one step in 2-rank torchrun
worlds (TP2, DP2, PP2), the storages autograd saves for one micro-batch, and the KV cache and
weights of a real EmbeddedEngine; then `python -m superrl.plan` and the trainer's start-up check."""
import json
import subprocess
import sys

import pytest

import make_tiny_model
from dist_harness import REPO_ROOT, run_torchrun
from superrl.config import load_config
from superrl.hf_config import load_arch
from superrl.trainer import memory_plan as mp

CPU_LOCAL_SPEC = mp.Target(80 * mp.GiB, transformer_engine=False, on_gpu=False)  # what these worlds run
# One micro-batch of 2 rows x (40 + 8) tokens: a width TP2 divides, so sequence parallelism adds no padding.
SHAPE = ["optim.micro_batch_size=2", "data.max_prompt_len=40", "rollout.max_tokens=8"]
# Small index tensors the fused loss keeps (vocab-shard target masks) are not planned: at most one
# int64 per token.
UNPLANNED_BYTES_PER_TOKEN = 8
QWEN_7B = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
           "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
           "max_position_embeddings": 131072, "hidden_act": "silu"}
RECIPE_7B = REPO_ROOT / "examples" / "qwen2.5-7b_math_h100_multinode.yaml"


def _model(tmp_path_factory, *args) -> str:
    out = tmp_path_factory.mktemp("plan_model") / "model"
    make_tiny_model.main([*args, "--out-dir", str(out)])
    return str(out)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> str:
    """Untied, qkv bias; vocab 1000 pads to 1024, so the padded vocabulary is what is counted."""
    return _model(tmp_path_factory, "--arch", "qwen2", "--hidden", "128", "--vocab", "1000")


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> str:
    """Tied embeddings: PP2 keeps a copy on the last stage."""
    return _model(tmp_path_factory, "--arch", "llama", "--hidden", "128", "--layers", "4", "--vocab", "1000")


@pytest.fixture(scope="module")
def qwen_7b(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("qwen2.5-7b")
    (directory / "config.json").write_text(json.dumps(QWEN_7B))
    return str(directory)


WORLDS = {  # name: (model fixture, overrides); every world has 2 ranks
    "tp2_sp_bf16": ("qwen", ["parallel.tp=2", "parallel.sequence_parallel=true", "model.dtype=bfloat16"]),
    "dp2_bf16_selective": ("qwen", ["model.dtype=bfloat16", "model.recompute=selective"]),
    "tp2_sp_fp32_full_tied": ("llama", ["parallel.tp=2", "parallel.sequence_parallel=true", "model.recompute=full"]),
    "pp2_fp32_tied_overlap": ("llama", ["parallel.pp=2", "optim.overlap_grad_reduce=true"]),
    # the critic drops the last stage's copy of the tied embedding and adds its value head
    "pp2_tied_gae_critic": ("llama", ["parallel.pp=2", "algorithm.advantage=gae"]),
}


@pytest.mark.parametrize("world", list(WORLDS))
def test_trainer_state_and_activations_match_the_real_model(world, request):
    model, overrides = WORLDS[world]
    hf_dir = request.getfixturevalue(model)
    overrides = [*SHAPE, *overrides]
    results = run_torchrun("memory_counts.py", 2, ["--hf-dir", hf_dir, *overrides], timeout=300)
    config, arch = load_config(None, [f"model.hf_dir={hf_dir}", *overrides]), load_arch(hf_dir)
    lay = mp.layout(config, 2)
    for rank in results:
        params = mp.stage_params(config, arch, lay, rank["pp_rank"])
        assert mp.DTYPE_BYTES[config.model.dtype] * params.total == rank["weights"]
        assert mp.FP32 * params.grad_buffer == rank["grads"]
        # The optimizer shard is 1/DP of the padded buffer; the tensors hold only its parameters.
        padding = params.grad_buffer - params.total
        moments = 2 * mp.FP32 * params.optimizer_shard
        assert 0 <= moments - rank["moments"] <= 2 * mp.FP32 * padding
        main = mp.FP32 * params.optimizer_shard if config.model.dtype == "bfloat16" else 0
        assert 0 <= main - rank["main_params"] <= mp.FP32 * padding * (config.model.dtype == "bfloat16")
        if "critic_weights" in rank:
            critic = mp.critic_stage_params(config, arch, lay, rank["pp_rank"])
            assert mp.DTYPE_BYTES[config.model.dtype] * critic.total == rank["critic_weights"]
            assert mp.FP32 * critic.grad_buffer == rank["critic_grads"]
        if "saved_activations" in rank:
            planned = mp.stage_saved_bytes(config, arch, lay, rank["pp_rank"], CPU_LOCAL_SPEC)
            tokens = mp.micro_batch(config, lay, rank["pp_rank"]).tokens
            assert abs(planned - rank["saved_activations"]) <= UNPLANNED_BYTES_PER_TOKEN * tokens


def test_embedded_engine_kv_cache_and_weights_match_a_real_engine(qwen):
    from superrl.rollout import EmbeddedEngine, SamplingParams

    config = load_config(None, [f"model.hf_dir={qwen}", *SHAPE, "rollout.n=4", "trainer.prompts_per_step=4",
                                "rollout.max_batch_size=8"])
    arch = load_arch(qwen)
    engine = EmbeddedEngine(qwen, max_batch_size=config.rollout.max_batch_size)
    prompts = [[5 + i] * config.data.max_prompt_len for i in range(config.trainer.prompts_per_step)]
    engine.generate(prompts, SamplingParams(n=config.rollout.n, max_tokens=config.rollout.max_tokens, seed=0))
    slots, positions = mp.embedded_kv_cache_shape(config, replicas=1)
    assert (engine.cache.slots, engine.cache.capacity) == (slots, positions) == (8, 64)
    assert engine.cache.data.numel() * engine.cache.data.element_size() == (
        slots * positions * mp.kv_bytes_per_token(arch, arch.num_kv_heads, mp.FP32))
    weights = sum(t.numel() * t.element_size() for t in engine.state_dict().values())
    assert weights == mp.hf_parameter_numel(arch) * mp.FP32


def test_mixed_precision_adam_costs_18_bytes_per_parameter_before_sharding(qwen_7b):
    """bf16 weights 2 + fp32 grads 4 + fp32 main params 4 + two fp32 moments 8, at DP1."""
    config = load_config(str(RECIPE_7B), [f"model.hf_dir={qwen_7b}"])
    arch = load_arch(qwen_7b)
    lay = mp.layout(config, 8)
    params = mp.stage_params(config, arch, lay, 0)
    state = sum(item.bytes for item in mp.trainer_state_items(config, arch, lay, 0)
                if not item.name.startswith("reference"))
    assert 18 * params.total <= state <= 18 * params.grad_buffer
    padded_vocab = arch.padded_vocab_size(config.model.vocab_pad_multiple)  # 152064: already a multiple
    total = sum(sum(mp.stage_parameter_numels(arch, 1, 2, stage, padded_vocab)) for stage in range(2))
    assert total == mp.hf_parameter_numel(arch)
    assert 15.0e9 < 2 * total < 15.5e9  # Qwen2.5-7B's bf16 weights: 7.6B params


def _plan(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "superrl.plan", *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_prints_a_plan_that_fits(tmp_path, qwen):
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{hf_dir: {qwen}}}\n")
    result = _plan("--config", config, "--gpu-gb", "8")
    assert result.returncode == 0, result.stderr
    assert "verdict: FITS" in result.stdout and "engine KV cache" in result.stdout


def test_cli_refuses_the_7b_recipe_on_a_1_gb_gpu(qwen_7b):
    fits = _plan("--config", RECIPE_7B, f"model.hf_dir={qwen_7b}", "--world-size", "16", "--gpu-gb", "80")
    assert fits.returncode == 0 and "verdict: FITS" in fits.stdout, fits.stdout + fits.stderr
    small = _plan("--config", RECIPE_7B, f"model.hf_dir={qwen_7b}", "--world-size", "16", "--gpu-gb", "1")
    assert small.returncode == 1 and "verdict: DOES NOT FIT" in small.stdout, small.stdout + small.stderr
    assert "vLLM cannot start" in small.stdout  # 0.5 GiB reserved cannot hold 7 GiB of engine weights


def test_cli_names_a_bad_config_key(qwen_7b):
    result = _plan("--config", RECIPE_7B, f"model.hf_dir={qwen_7b}", "parallel.tpp=2")
    assert result.returncode != 0 and "parallel.tp" in result.stderr


def test_the_trainer_refuses_only_on_a_gpu(qwen_7b):
    config = load_config(str(RECIPE_7B), [f"model.hf_dir={qwen_7b}"])
    arch = load_arch(qwen_7b)
    with pytest.raises(mp.MemoryPlanError, match="DOES NOT FIT"):
        mp.check_memory_plan(config, arch, 16, mp.Target(8 * mp.GiB))
    plan = mp.check_memory_plan(config, arch, 16, mp.Target(8 * mp.GiB, on_gpu=False))
    assert not plan.fits and plan.device == "host"


def test_colocated_engine_overlaps_training_and_a_resident_one_adds(qwen_7b):
    arch = load_arch(qwen_7b)
    plans = {colocate: mp.plan_memory(load_config(str(RECIPE_7B), [f"model.hf_dir={qwen_7b}",
                                                                   f"rollout.colocate={colocate}"]),
                                      arch, 16, mp.Target(80 * mp.GiB))
             for colocate in (True, False)}
    for colocate, plan in plans.items():
        resident, train, rollout = plan.phase_bytes(mp.RESIDENT), plan.training_bytes, plan.phase_bytes(mp.ROLLOUT)
        assert rollout == int(0.5 * 80 * mp.GiB)  # vLLM takes its whole reservation
        assert plan.peak_bytes == resident + (max(train, rollout) if colocate else train + rollout)
