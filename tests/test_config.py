"""Config loading and validation errors name the offending values."""
import pytest

from superrl.config import ConfigError, load_config, validate_launch
from superrl.hf_config import UnsupportedModelError, arch_from_hf_config

HF = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 6,
      "num_attention_heads": 12, "num_key_value_heads": 4, "intermediate_size": 128,
      "vocab_size": 500, "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}}


def _validate(tp=1, pp=1, world=None, pad=128, prompts=8, **hf_changes):
    config = load_config(None, [f"parallel.tp={tp}", f"parallel.pp={pp}", f"model.vocab_pad_multiple={pad}",
                                f"trainer.prompts_per_step={prompts}"])
    validate_launch(config, arch_from_hf_config({**HF, **hf_changes}), world or tp * pp)


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("parallel: {tp: 2}\noptim: {lr: 3.0e-6}\nalgorithm: {switch: {mode: window}}\n")
    config = load_config(str(path), ["optim.lr=1e-5", "data.train_files=[a.jsonl,b.parquet]"])
    assert config.parallel.tp == 2 and config.optim.lr == 1e-5
    assert config.algorithm.switch.mode == "window"
    assert config.data.train_files == ["a.jsonl", "b.parquet"]


def test_bare_off_is_the_off_mode_not_a_boolean(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algorithm: {switch: {mode: off}}\nmodel: {transformer_engine: on}\n")
    assert load_config(str(path)).algorithm.switch.mode == "off"
    assert load_config(str(path)).model.transformer_engine == "on"
    assert load_config(None, ["algorithm.switch.mode=off"]).algorithm.switch.mode == "off"


@pytest.mark.parametrize("override,message", [
    ("parallel.tpp=2", "unknown config key 'parallel.tpp'; did you mean 'parallel.tp'?"),
    ("trainer.totl_steps=2", "did you mean 'trainer.total_steps'?"),
    ("paralel.tp=2", "did you mean 'parallel'?"),
    ("parallel.tp=two", "parallel.tp must be of type int, got 'two'"),
    ("algorithm.switch.mode=sometimes", "algorithm.switch.mode='sometimes' is not one of"),
    ("rollout.engine=sglang", "rollout.engine='sglang' is not one of embedded, vllm"),
    ("algorithm.advantage=ppo", "algorithm.advantage='ppo' is not one of"),
    ("algorithm.loss_agg=mean", "algorithm.loss_agg='mean' is not one of"),
    ("algorithm.kl_estimator=k4", "algorithm.kl_estimator='k4' is not one of"),
    ("trainer.max_consecutive_bad_steps=0", "trainer.max_consecutive_bad_steps=0 must be >= 1"),
    ("trainer.prompts_per_step=0", "trainer.prompts_per_step=0 must be >= 1"),
    ("optim.micro_batch_size=0", "optim.micro_batch_size=0 must be >= 1"),
    ("rollout.n=0", "rollout.n=0 must be >= 1"),
    ("algorithm.policy_loss=grpo", "algorithm.policy_loss='grpo' is not one of ['ppo_clip', 'gspo', 'cispo']"),
    ("algorithm.policy_loss=gspo algorithm.dual_clip=3.0",
     "algorithm.dual_clip=3.0 is invalid: caps PPO's token ratio, so it needs policy_loss=ppo_clip"),
    ("algorithm.rollout_correction=is",
     "algorithm.rollout_correction='is' is not one of ['none', 'tis', 'mis', 'seq_tis']"),
    ("algorithm.rollout_correction_cap=1.0", "algorithm.rollout_correction_cap=1.0 is invalid: must be > 1"),
    ("reward.overlong_buffer_len=-1", "reward.overlong_buffer_len=-1 must be in [0, rollout.max_tokens=64]"),
    ("rollout.max_tokens=8 reward.overlong_buffer_len=9", "reward.overlong_buffer_len=9 must be in [0, "
                                                          "rollout.max_tokens=8]"),
    ("reward.overlong_penalty=-0.5", "reward.overlong_penalty=-0.5 must be >= 0"),
    ("algorithm.advantage=rloo rollout.n=1", "algorithm.advantage=rloo needs rollout.n >= 2"),
    ("model.dtype=float16", "model.dtype='float16' is not one of float32, bfloat16"),
    ("rollout.dtype=fp8", "rollout.dtype='fp8' is not one of float32, bfloat16"),
    ("model.recompute=some", "model.recompute='some' is not one of none, selective, full"),
])
def test_bad_keys_and_values(override, message):
    """Refused at load, before any model or process group exists."""
    with pytest.raises(ConfigError) as err:
        load_config(None, override.split())
    assert message in str(err.value)


def test_kl_in_reward_is_accepted():
    assert load_config(None, ["algorithm.kl_in_reward=true"]).algorithm.kl_in_reward
    assert load_config(None, ["algorithm.kl_in_reward=true", "algorithm.kl_coef=0.1"]).algorithm.kl_coef == 0.1


def test_policy_loss_and_shaping_default_to_plain_ppo_clip():
    config = load_config(None, [])
    assert config.algorithm.policy_loss == "ppo_clip" and config.algorithm.rollout_correction == "none"
    assert config.reward.overlong_buffer_len == 0 and not config.algorithm.mask_truncated


@pytest.mark.parametrize("kwargs,message", [
    (dict(tp=8), "parallel.tp=8 does not divide num_attention_heads=12"),
    (dict(tp=3), "parallel.tp=3 does not divide num_key_value_heads=4"),
    (dict(tp=2, pad=3, vocab_size=501), "parallel.tp=2 does not divide the padded vocab size 501"),
    (dict(pp=4), "parallel.pp=4 does not divide num_hidden_layers=6"),
    (dict(tp=2, pp=3, world=8), "world size 8 is not divisible by parallel.tp x parallel.pp = 2 x 3 = 6"),
    (dict(tp=2, world=6, prompts=8), "trainer.prompts_per_step=8 is not divisible by the data-parallel size 3 "
                                     "(world size 6 / (parallel.tp x parallel.pp = 2))"),
])
def test_parallelism_errors_name_the_numbers(kwargs, message):
    with pytest.raises(ConfigError) as err:
        _validate(**kwargs)
    assert message in str(err.value)


def test_valid_layouts_pass():
    _validate(tp=2, pp=3, world=12)
    _validate(tp=4, pp=2, world=8)
    _validate(tp=2, world=6, prompts=9)


def test_unsupported_architecture_is_named():
    with pytest.raises(UnsupportedModelError, match="'MistralForCausalLM' is not supported"):
        arch_from_hf_config({**HF, "architectures": ["MistralForCausalLM"]})


def test_rollout_dtype_defaults_to_the_training_dtype():
    from superrl.trainer.engine_setup import engine_dtype

    assert engine_dtype(load_config(None, [])) == "float32"
    assert engine_dtype(load_config(None, ["model.dtype=bfloat16"])) == "bfloat16"
    assert engine_dtype(load_config(None, ["model.dtype=bfloat16", "rollout.dtype=float32"])) == "float32"


def test_sequence_parallel_needs_tensor_parallelism():
    config = load_config(None, ["parallel.sequence_parallel=true"])
    with pytest.raises(ConfigError, match="parallel.sequence_parallel=true needs parallel.tp > 1"):
        validate_launch(config, arch_from_hf_config(HF), 1)
    validate_launch(load_config(None, ["parallel.sequence_parallel=true", "parallel.tp=2"]), arch_from_hf_config(HF), 2)
