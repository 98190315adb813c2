"""Held-out accuracy per data source: greedy decoding with the rollout engine, scored by the
same reward functions as training (a response is correct when its reward > 0.5)."""
from collections import defaultdict

from superrl.rollout import SamplingParams


def evaluate(engine, tokenizer, scorer, examples: list, max_tokens: int) -> dict:
    params = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens,
                            stop_token_ids=[tokenizer.eos_token_id])
    completions = engine.generate([ex.prompt_ids for ex in examples], params)
    texts = [tokenizer.decode(group[0].token_ids, skip_special_tokens=True) for group in completions]
    scored = scorer.score(texts, [ex.ground_truth for ex in examples], [ex.data_source for ex in examples])
    correct, total = defaultdict(int), defaultdict(int)
    for ex, score in zip(examples, scored.scores):
        total[ex.data_source] += 1
        correct[ex.data_source] += score > 0.5
    result = {f"eval/{source}/accuracy": correct[source] / total[source] for source in sorted(total)}
    result["eval/accuracy"] = sum(correct.values()) / max(sum(total.values()), 1)
    return result
