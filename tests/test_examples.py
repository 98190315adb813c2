"""Every example recipe is valid without running it: shell syntax, and the trainer's own start-up
checks (superrl.config.validate_launch) against the model's shape at the world size its shell script
launches."""
import re
import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from superrl.config import load_config, validate_launch
from superrl.hf_config import arch_from_hf_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(EXAMPLES.glob("**/*.sh"))
CONFIGS = sorted(EXAMPLES.glob("**/*.yaml"))

# Known real models, by a substring of model.hf_dir (their config.json facts, written by hand).
KNOWN_MODELS = {
    "qwen2.5-7b": {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944,
                   "vocab_size": 152064, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                   "tie_word_embeddings": False, "max_position_embeddings": 131072},
    "smollm2-135m": {"architectures": ["LlamaForCausalLM"], "hidden_size": 576, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536,
                     "vocab_size": 49152, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
                     "tie_word_embeddings": True, "max_position_embeddings": 8192},
}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _commands(text: str) -> list[str]:
    """Logical shell lines, comments dropped, backslash continuations joined."""
    lines = text.replace("\\\n", " ").splitlines()
    return [line for line in lines if not line.lstrip().startswith("#")]


def _scripts_for(config: Path) -> str:
    """Text of the scripts that name this config, plus the example scripts they call."""
    texts = [s.read_text() for s in SCRIPTS if _rel(config) in s.read_text()]
    called = [s.read_text() for s in SCRIPTS if any(s.name in t for t in texts)]
    return "\n".join(dict.fromkeys(texts + called))


def _launch_line(config: Path, text: str) -> str:
    """The superrl.train command that runs this config (by name, else the only one)."""
    lines = [line for line in _commands(text) if "superrl.train" in line]
    named = [line for line in lines if _rel(config) in line]
    assert len(named) == 1 or len(lines) == 1, f"cannot tell which command runs {_rel(config)}: {lines}"
    return named[0] if len(named) == 1 else lines[0]


def _shell_int(value: str, text: str) -> int:
    """A literal, or a $VAR with a literal default in the script (VAR=${VAR:-N} or VAR=N)."""
    value = value.strip("\"'")
    if value.isdigit():
        return int(value)
    name = re.fullmatch(r"\$\{?(\w+)\}?", value).group(1)
    default = re.search(rf"^\s*{name}=(?:\$\{{{name}:-)?(\d+)", text, re.M)
    assert default, f"no literal default for ${name}"
    return int(default.group(1))


def _world_size(line: str, text: str) -> int:
    if "torchrun" not in line:
        return 1
    option = lambda name: re.search(rf"--{name}[ =](\S+)", line)  # noqa: E731
    nodes, procs = option("nnodes"), option("nproc[-_]per[-_]node")
    return (_shell_int(nodes.group(1), text) if nodes else 1) * (_shell_int(procs.group(1), text) if procs else 1)


def _tiny_model_arch(text: str):
    """The arch tools/make_tiny_model.py writes with the arguments the script passes it."""
    import make_tiny_model as tool  # tools/ is on sys.path (conftest); imports transformers, so lazily

    line = next(line for line in _commands(text) if "make_tiny_model.py" in line)
    words = shlex.split(line)
    args = tool.parse_args(words[words.index(next(w for w in words if w.endswith("make_tiny_model.py"))) + 1:])
    ids = SimpleNamespace(bos_token_id=1, eos_token_id=2, pad_token_id=0)  # no tokenizer training needed
    hf_config, model_cls = tool.build_config(args, ids)
    return arch_from_hf_config({**hf_config.to_dict(), "architectures": [model_cls.__name__]})


def _arch(config, text: str):
    hf_dir = config.model.hf_dir.lower()
    for key, hf_config in KNOWN_MODELS.items():
        if key in hf_dir:
            return arch_from_hf_config({"hidden_act": "silu", **hf_config})
    if "make_tiny_model.py" in text:
        return _tiny_model_arch(text)
    pytest.fail(f"model {config.model.hf_dir!r} is unknown to this test; add its config.json facts to KNOWN_MODELS")


@pytest.mark.parametrize("script", SCRIPTS, ids=_rel)
def test_script_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", CONFIGS, ids=_rel)
def test_config_loads_and_fits_its_launch(path):
    config = load_config(str(path))  # unknown keys and invalid choices raise ConfigError
    text = _scripts_for(path)
    assert text, f"no examples/*.sh runs {_rel(path)}"
    line = _launch_line(path, text)
    config = load_config(str(path), re.findall(r"\bparallel\.(?:tp|pp)=\d+", line))
    validate_launch(config, _arch(config, text), _world_size(line, text))


def test_qwen_recipes_launch_two_nodes_of_eight():
    """The multi-node recipes really are TP4 x PP2 over 16 ranks (DP 2)."""
    for task in ("gsm8k", "math"):
        path = EXAMPLES / f"qwen2.5-7b_{task}_h100_multinode.yaml"
        text = _scripts_for(path)
        config = load_config(str(path))
        assert _world_size(_launch_line(path, text), text) == 16
        assert (config.parallel.tp, config.parallel.pp, config.rollout.engine) == (4, 2, "vllm")
        assert config.model.dtype == "bfloat16" and config.rollout.dtype is None  # H100s train in bf16
        assert (config.parallel.sequence_parallel, config.model.recompute, config.optim.overlap_grad_reduce) == (
            True, "selective", True)
        rollout = config.rollout  # every GPU generates, vLLM takes half of each and sleeps during updates
        assert (rollout.tensor_parallel_size, rollout.gpu_memory_utilization, rollout.colocate) == (2, 0.5, True)


def test_a_recipe_with_an_unknown_model_fails():
    config = load_config(None, ["model.hf_dir=/models/unknown-1b"])
    with pytest.raises(pytest.fail.Exception, match="unknown-1b"):
        _arch(config, "python -m superrl.train --config c.yaml")
