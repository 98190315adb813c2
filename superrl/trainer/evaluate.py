"""Held-out accuracy per data source: greedy decoding with the rollout engine, scored by the
same reward functions as training (a response is correct when its reward > 0.5)."""
from collections import defaultdict

from transformers import AutoTokenizer

from superrl.config import Config
from superrl.distributed import ParallelContext
from superrl.hf_config import ModelArch
from superrl.rewards.scorer import RewardScorer
from superrl.rollout import SamplingParams
from superrl.sync import WeightSync
from superrl.trainer import checkpoint
from superrl.trainer.engine_setup import bounded, build_engine
from superrl.trainer.example_data import load_examples
from superrl.trainer.model_setup import build_train_state
from superrl.trainer.rollout_placement import engine_placement


def evaluate(engine, tokenizer, scorer, examples: list, max_tokens: int) -> dict:
    """On every rank of one engine replica (they generate together); the result on the rank with
    the `scorer`, {} on the others."""
    params = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens,
                            stop_token_ids=[tokenizer.eos_token_id])
    completions = engine.generate([ex.prompt_ids for ex in examples], params)
    if scorer is None:
        return {}
    texts = [tokenizer.decode(group[0].token_ids, skip_special_tokens=True) for group in completions]
    scored = scorer.score(texts, [ex.ground_truth for ex in examples], [ex.data_source for ex in examples])
    correct, total = defaultdict(int), defaultdict(int)
    for ex, score in zip(examples, scored.scores):
        total[ex.data_source] += 1
        correct[ex.data_source] += score > 0.5
    result = {f"eval/{source}/accuracy": correct[source] / total[source] for source in sorted(total)}
    result["eval/accuracy"] = sum(correct.values()) / max(sum(total.values()), 1)
    return result


def evaluate_checkpoint(config: Config, arch: ModelArch, ctx: ParallelContext, path: str) -> dict:
    """Model weights of a training checkpoint -> engine -> held-out accuracy (on global rank 0)."""
    tokenizer = AutoTokenizer.from_pretrained(config.model.hf_dir)
    examples = load_examples(config, config.data.eval_files, tokenizer, arch).example_set.examples
    state = build_train_state(config, arch, load_weights=False)
    checkpoint.load_checkpoint(path, state, arch, load_trainer_state=False)
    placement = engine_placement(config, ctx)
    engine = build_engine(config) if placement.runs_engine else None
    WeightSync(state.model, arch, engine, config.rollout.sync_bucket_mb).sync()
    try:
        if placement.replica != 0 or engine is None:
            return {}
        if ctx.rank != 0:
            return evaluate(engine, tokenizer, None, examples, config.rollout.max_tokens)
        with RewardScorer({ex.data_source for ex in examples}, config.reward.function,
                          timeout_s=config.reward.timeout_s) as scorer:
            return evaluate(engine, tokenizer, scorer, examples, config.rollout.max_tokens)
    finally:
        if engine is not None:  # before the process groups go: a vLLM engine tears them down
            with bounded(config.trainer.dist_timeout_s, "rollout engine shutdown"):
                engine.close()
