"""Which reward function scores which data source, and loading ``module:function`` specs.

A data source is matched case-insensitively, first by its full name, then by its last path part
(``openai/gsm8k`` -> ``gsm8k``), then by its family, the part before the first ``_``, ``-`` or ``.``
(``arith_l3`` -> ``arith``). ``reward.function`` (a ``module:function`` spec) overrides the table
for every source. Reward functions take ``(solution_str, ground_truth)`` and return a number or a
dict with a numeric ``score``.
"""
import importlib
import re
from collections.abc import Callable, Iterable

_GSM8K = "superrl.rewards.gsm8k:compute_score"
_MATH = "superrl.rewards.math:compute_score"
_HOTPOTQA = "superrl.rewards.hotpotqa:compute_score"
DEFAULT_REWARD_FUNCTIONS = {
    "gsm8k": _GSM8K,
    "gsm_symbolic": _GSM8K,
    "arith": _GSM8K,
    "math": _MATH,
    "hendrycks_math": _MATH,
    "competition_math": _MATH,
    "math500": _MATH,
    "hotpotqa": _HOTPOTQA,
    "hotpot_qa": _HOTPOTQA,
}
_FAMILY_SEPARATOR = re.compile(r"[_\-.]")


class RewardFunctionError(ValueError):
    """A reward function spec that cannot be resolved or imported."""


def reward_spec_for(data_source: str, override: str | None = None) -> str:
    """The ``module:function`` spec that scores ``data_source``."""
    if override:
        return override
    name = data_source.lower().rsplit("/", 1)[-1]
    family = _FAMILY_SEPARATOR.split(name, maxsplit=1)[0]
    for key in (data_source.lower(), name, family):
        if key in DEFAULT_REWARD_FUNCTIONS:
            return DEFAULT_REWARD_FUNCTIONS[key]
    raise RewardFunctionError(
        f"no default reward function for data_source {data_source!r} (known: "
        f"{', '.join(sorted(DEFAULT_REWARD_FUNCTIONS))}); set reward.function=module:function")


def load_reward_function(spec: str) -> Callable:
    """Import ``module:function``; raises RewardFunctionError saying what is missing."""
    module_name, colon, function_name = spec.partition(":")
    if not colon or not module_name or not function_name:
        raise RewardFunctionError(f"reward.function must look like 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any import-time failure of user code is a config error here
        raise RewardFunctionError(f"reward function {spec!r}: cannot import module {module_name!r}: "
                                  f"{type(error).__name__}: {error}") from error
    function = getattr(module, function_name, None)
    if not callable(function):
        raise RewardFunctionError(f"reward function {spec!r}: module {module_name!r} has no callable "
                                  f"{function_name!r}")
    return function


def resolve_reward_specs(data_sources: Iterable[str], override: str | None = None) -> dict[str, str]:
    """Map each data source to its spec and import every spec once, so bad config fails at load time."""
    specs = {source: reward_spec_for(source, override) for source in data_sources}
    for spec in set(specs.values()):
        load_reward_function(spec)
    return specs
