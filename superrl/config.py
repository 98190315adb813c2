"""The one config schema: typed dataclasses, loaded from YAML with dotted `key=value` overrides.

Every check lives here and runs before any process group exists, with errors that name the key:
`load_config` checks what the config alone decides (types, choices, ranges, combinations);
`validate_launch` checks what needs the model's shape and the world size as well.
"""
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import OmegaConf

from superrl.algorithms.config import AlgorithmConfig  # the algorithm section lives beside its code


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the value."""


@dataclass
class ModelConfig:
    hf_dir: str = ""  # tokenizer + architecture; initial weights unless megatron_dir is set
    megatron_dir: Optional[str] = None
    vocab_pad_multiple: int = 128  # TP-independent padding keeps checkpoints reshardable
    fp8_output_layer: bool = False
    fp8_amax_history: int = 16
    logprob_chunk_size: Optional[int] = None  # tokens per chunk of the fused output layer
    transformer_engine: str = "auto"  # auto | on | off
    dtype: str = "float32"  # float32 | bfloat16 (megatron mixed precision: fp32 main params and grads)
    recompute: str = "none"  # activation recomputation: none | selective (core attention) | full (every layer)
    cpu_gemm: str = "auto"  # decoder linear GEMMs on CPU: auto | onednn | torch (models/cpu_gemm.py)


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    sequence_parallel: bool = False  # megatron sequence parallelism (needs tp > 1)


@dataclass
class DataConfig:
    train_files: list = field(default_factory=list)
    eval_files: list = field(default_factory=list)
    max_prompt_len: int = 256
    prompt_template: str = "chat"  # chat | plain
    skip_bad_rows: bool = False


@dataclass
class RolloutConfig:
    engine: str = "embedded"  # embedded | vllm
    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 64
    max_batch_size: int = 64
    sync_bucket_mb: int = 512  # slime's default (--update-weight-buffer-size); a limit, not an allocation
    dtype: Optional[str] = None  # the engine's weights: float32 | bfloat16; None: model.dtype
    # Placement: world / tensor_parallel_size engine replicas over every rank; None: parallel.tp
    tensor_parallel_size: Optional[int] = None
    gpu_memory_utilization: float = 0.5  # vLLM's share of each GPU (verl's default; vLLM's own 0.92 assumes no trainer)
    max_model_len: Optional[int] = None  # the engine's context (KV sizing); None: data.max_prompt_len + rollout.max_tokens
    colocate: bool = True  # sleep the engine during training (vLLM sleep mode frees its weights and KV cache)
    # Mean |engine - trainer| log-prob of the sampled tokens allowed right after a weight sync;
    # None: 1e-4 in float32, 5e-2 when the trainer or engine runs in bfloat16 (docs/parity_guard.md)
    parity_tolerance: Optional[float] = None


@dataclass
class RewardConfig:
    function: Optional[str] = None  # module:function, overrides the per-source default
    timeout_s: float = 10.0
    # DAPO overlong shaping (algorithms/overlong.py): a linear penalty, up to overlong_penalty, over
    # the last overlong_buffer_len tokens before rollout.max_tokens; 0: off
    overlong_buffer_len: int = 0
    overlong_penalty: float = 1.0


@dataclass
class OptimizerSettings:
    """One model's AdamW and LR schedule (constant after a linear warm-up): the policy's in
    `optim.*`, the critic's in `critic.optim.*`."""
    lr: float = 1e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    warmup_steps: int = 0  # LR warm-up


@dataclass
class OptimConfig(OptimizerSettings):
    micro_batch_size: int = 8  # sequences per forward/backward
    # Set: rows packed into sequences of at most this many tokens instead (docs/packing.md)
    max_tokens_per_micro_batch: Optional[int] = None
    use_distributed_optimizer: bool = True
    overlap_grad_reduce: bool = False  # DP gradient reduction bucket by bucket during the backward


@dataclass
class CriticConfig:
    """`critic.*`: the value model of `algorithm.advantage=gae` (PPO with a critic, trainer/critic.py).
    It has the policy's architecture and placement and trains on the policy's micro-batches,
    mini-batches and epochs."""
    hf_dir: Optional[str] = None  # initial weights; neither set: the policy's (model.megatron_dir or model.hf_dir)
    megatron_dir: Optional[str] = None
    cliprange_value: float = 0.5  # c of the clipped value loss (verl's default)
    warmup_steps: int = 0  # the first steps train only the critic (verl's trainer.critic_warmup)
    optim: OptimizerSettings = field(default_factory=OptimizerSettings)


@dataclass
class TrainerConfig:
    seed: int = 0
    total_steps: int = 100
    prompts_per_step: int = 8
    save_every: int = 0  # 0: only at the end
    eval_every: int = 0
    keep_last: int = 3
    run_dir: str = "runs/default"
    resume: bool = False
    resume_from: Optional[str] = None
    dist_timeout_s: float = 600.0  # a dead rank ends the job after this, instead of hanging it
    # SIGTERM/SIGUSR1 -> save and exit within this; torchrun SIGKILLs its workers 30 s after its own SIGTERM
    preemption_grace_s: float = 25.0
    max_consecutive_bad_steps: int = 5  # NaN/Inf loss or grads: skip the step; stop after this many in a row
    loggers: list = field(default_factory=lambda: ["jsonl", "tensorboard"])  # metric sinks, from LOGGERS
    wandb_project: str = "superrl"
    wandb_run_name: Optional[str] = None  # None: the basename of run_dir


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


CHOICES = {
    "model.transformer_engine": ("auto", "on", "off"),
    "model.dtype": ("float32", "bfloat16"),
    "model.recompute": ("none", "selective", "full"),
    "model.cpu_gemm": ("auto", "onednn", "torch"),
    "rollout.dtype": ("float32", "bfloat16"),  # or null: model.dtype
    "data.prompt_template": ("chat", "plain"),
    "rollout.engine": ("embedded", "vllm"),
}
LOGGERS = ("jsonl", "tensorboard", "wandb")  # trainer.loggers: the metric sinks of trainer/sinks/


def _build(cls, values: dict, prefix: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, hint, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(value, hint, key: str):
    if value is None:
        if typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint):
            return None
        raise ConfigError(f"{key} must not be null")
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    base = typing.get_origin(base) or base
    if base is str and isinstance(value, bool):  # YAML 1.1 reads bare `off` / `on` as booleans
        return "on" if value else "off"
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is list and isinstance(value, (str, tuple)):
        return [value] if isinstance(value, str) else list(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be of type {base.__name__}, got {value!r}")
    return value


def load_config(path: Optional[str] = None, overrides=()) -> Config:
    """YAML file (optional) + dotted overrides such as `parallel.tp=2` -> a checked Config."""
    base = OmegaConf.load(path) if path else OmegaConf.create({})
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    config = _build(Config, OmegaConf.to_container(merged, resolve=True), "")
    check_choices(config)
    try:
        config.algorithm.validate()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_trainer_settings(config)
    return config


def get_key(config: Config, dotted: str):
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def check_choices(config: Config) -> None:
    for key, allowed in CHOICES.items():
        value = get_key(config, key)
        if value is not None and value not in allowed:  # None: an optional key left unset
            raise ConfigError(f"{key}={get_key(config, key)!r} is not one of {', '.join(allowed)}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_trainer_settings(config: Config) -> None:
    """Ranges and combinations of the trainer's own keys, and what the trainer does not support."""
    t, algorithm = config.trainer, config.algorithm
    _require(t.prompts_per_step >= 1, f"trainer.prompts_per_step={t.prompts_per_step} must be >= 1")
    _require(t.max_consecutive_bad_steps >= 1,
             f"trainer.max_consecutive_bad_steps={t.max_consecutive_bad_steps} must be >= 1")
    _require(t.preemption_grace_s > 0, f"trainer.preemption_grace_s={t.preemption_grace_s} must be > 0")
    for name in t.loggers:
        _require(name in LOGGERS, f"trainer.loggers: {name!r} is not one of {', '.join(LOGGERS)}")
    _require(config.optim.micro_batch_size >= 1,
             f"optim.micro_batch_size={config.optim.micro_batch_size} must be >= 1")
    check_token_budget(config)
    _require(config.rollout.n >= 1, f"rollout.n={config.rollout.n} must be >= 1")
    _require(algorithm.advantage != "rloo" or config.rollout.n >= 2,
             f"algorithm.advantage=rloo needs rollout.n >= 2 responses per prompt, got rollout.n={config.rollout.n}")
    check_rollout_settings(config.rollout, config.data)
    check_reward_shaping(config.reward, config.rollout)
    check_critic_settings(config)


def check_reward_shaping(reward: RewardConfig, rollout: RolloutConfig) -> None:
    _require(0 <= reward.overlong_buffer_len <= rollout.max_tokens,
             f"reward.overlong_buffer_len={reward.overlong_buffer_len} must be in [0, rollout.max_tokens="
             f"{rollout.max_tokens}] (0: no overlong shaping)")
    _require(reward.overlong_penalty >= 0, f"reward.overlong_penalty={reward.overlong_penalty} must be >= 0")


def check_critic_settings(config: Config) -> None:
    critic, algorithm = config.critic, config.algorithm
    if algorithm.advantage != "gae":
        _require(critic.hf_dir is None and critic.megatron_dir is None,
                 f"critic.hf_dir / critic.megatron_dir are set but algorithm.advantage={algorithm.advantage!r} "
                 "trains no critic; set algorithm.advantage=gae for PPO with a critic")
        return
    _require(critic.cliprange_value > 0, f"critic.cliprange_value={critic.cliprange_value} must be > 0")
    _require(critic.warmup_steps >= 0, f"critic.warmup_steps={critic.warmup_steps} must be >= 0")
    _require(critic.optim.lr > 0, f"critic.optim.lr={critic.optim.lr} must be > 0")
    _require(algorithm.switch.mode != "adv_gate",
             "algorithm.switch.mode=adv_gate gates on each response's outcome advantage; "
             "algorithm.advantage=gae's advantages are per token: use per_prompt, which gates on the rewards")


def check_token_budget(config: Config) -> None:
    """A packed micro-batch holds whole rows: the longest rollout row (prompt + response, less the
    last token, which is only a target) must fit. Expert rows are checked when packed."""
    budget = config.optim.max_tokens_per_micro_batch
    longest = config.data.max_prompt_len + config.rollout.max_tokens - 1
    _require(budget is None or budget >= longest,
             f"optim.max_tokens_per_micro_batch={budget} cannot hold the longest rollout row: "
             f"data.max_prompt_len + rollout.max_tokens - 1 = {config.data.max_prompt_len} + "
             f"{config.rollout.max_tokens} - 1 = {longest} tokens")


def check_rollout_settings(rollout: RolloutConfig, data: DataConfig) -> None:
    _require(0 < rollout.gpu_memory_utilization <= 1,
             f"rollout.gpu_memory_utilization={rollout.gpu_memory_utilization} must be in (0, 1]")
    _require(rollout.tensor_parallel_size is None or rollout.tensor_parallel_size >= 1,
             f"rollout.tensor_parallel_size={rollout.tensor_parallel_size} must be >= 1")
    _require(rollout.parity_tolerance is None or rollout.parity_tolerance > 0,
             f"rollout.parity_tolerance={rollout.parity_tolerance} must be > 0")
    needed = data.max_prompt_len + rollout.max_tokens
    _require(rollout.max_model_len is None or rollout.max_model_len >= needed,
             f"rollout.max_model_len={rollout.max_model_len} is below data.max_prompt_len + rollout.max_tokens "
             f"= {data.max_prompt_len} + {rollout.max_tokens} = {needed}")


def validate_launch(config: Config, arch, world_size: int) -> None:
    """Every check that needs the model's shape (a ModelArch) and the world size torchrun passes
    (`distributed.world_size_from_env`); `superrl.train` and `superrl.eval` run it before any
    process group exists."""
    validate_parallelism(config, arch, world_size)
    validate_data_parallel_batch(config, world_size)
    validate_engine_parallelism(config, arch, world_size)
    validate_context_length(config, arch)


def validate_parallelism(config: Config, arch, world_size: int) -> None:
    """The TP x PP layout against the model's shape (a ModelArch) and the world size."""
    tp, pp = config.parallel.tp, config.parallel.pp
    if tp < 1 or pp < 1:
        raise ConfigError(f"parallel.tp={tp} and parallel.pp={pp} must both be >= 1")
    vocab = arch.padded_vocab_size(config.model.vocab_pad_multiple)
    if arch.num_heads % tp:
        raise ConfigError(f"parallel.tp={tp} does not divide num_attention_heads={arch.num_heads}")
    if arch.num_kv_heads % tp:
        raise ConfigError(f"parallel.tp={tp} does not divide num_key_value_heads={arch.num_kv_heads}")
    if vocab % tp:
        raise ConfigError(f"parallel.tp={tp} does not divide the padded vocab size {vocab} "
                          f"(vocab_size={arch.vocab_size}, model.vocab_pad_multiple="
                          f"{config.model.vocab_pad_multiple})")
    if config.parallel.sequence_parallel and tp == 1:
        raise ConfigError("parallel.sequence_parallel=true needs parallel.tp > 1 (it splits the sequence over TP ranks)")
    if arch.num_layers % pp:
        raise ConfigError(f"parallel.pp={pp} does not divide num_hidden_layers={arch.num_layers}")
    if world_size % (tp * pp):
        raise ConfigError(f"world size {world_size} is not divisible by parallel.tp x parallel.pp "
                          f"= {tp} x {pp} = {tp * pp}")


def engine_tensor_parallel_size(config: Config) -> int:
    """`rollout.tensor_parallel_size`, by default the trainer's `parallel.tp`."""
    return config.rollout.tensor_parallel_size or config.parallel.tp


def validate_engine_parallelism(config: Config, arch, world_size: int) -> None:
    """world / engine TP engine replicas, each splitting the heads over its ranks."""
    tp = engine_tensor_parallel_size(config)
    key = f"rollout.tensor_parallel_size={tp}"
    _require(world_size % tp == 0, f"{key} does not divide the world size {world_size}")
    _require(arch.num_heads % tp == 0, f"{key} does not divide num_attention_heads={arch.num_heads}")
    _require(arch.num_kv_heads % tp == 0, f"{key} does not divide num_key_value_heads={arch.num_kv_heads}")


def validate_data_parallel_batch(config: Config, world_size: int) -> None:
    """Each step's prompts split evenly over the DP = world size / (TP x PP) replicas."""
    model_parallel = config.parallel.tp * config.parallel.pp
    dp = world_size // model_parallel
    prompts = config.trainer.prompts_per_step
    _require(prompts % dp == 0,
             f"trainer.prompts_per_step={prompts} is not divisible by the data-parallel size {dp} "
             f"(world size {world_size} / (parallel.tp x parallel.pp = {model_parallel}))")
    mini_batches = config.algorithm.ppo_mini_batches
    _require((prompts // dp) % mini_batches == 0,
             f"algorithm.ppo_mini_batches={mini_batches} does not divide the {prompts // dp} prompts of each "
             f"data-parallel rank (trainer.prompts_per_step={prompts} / DP {dp}): every mini-batch takes an "
             "equal share of every rank's prompts")


def validate_context_length(config: Config, arch) -> None:
    """A rollout row is a prompt of at most data.max_prompt_len tokens plus a response of at most
    rollout.max_tokens: it must fit the model's max_position_embeddings. Refused here, at start-up,
    because neither the engine nor RoPE would fail later: they would silently run past the context
    the model was trained for."""
    prompt, response, context = config.data.max_prompt_len, config.rollout.max_tokens, arch.max_position_embeddings
    if prompt < 1 or response < 1:
        raise ConfigError(f"data.max_prompt_len={prompt} and rollout.max_tokens={response} must both be >= 1")
    if prompt + response > context:
        raise ConfigError(f"data.max_prompt_len + rollout.max_tokens = {prompt} + {response} = {prompt + response} "
                          f"exceeds the model's max_position_embeddings={context}; lower one of them")
