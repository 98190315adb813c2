"""Prompt formatting and tokenisation of generic rows into ``Example``s.

Formatting (``template``): ``"chat"`` renders the prompt as a user turn (or the given messages)
with ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``; ``"plain"`` fills
``plain_template`` (a string containing ``{prompt}``; chat messages are joined by newlines).

Prompt length policy (``overlong``), for prompts longer than ``max_prompt_len`` tokens:
``"drop"`` (default) leaves the row out, ``"truncate"`` keeps the *last* ``max_prompt_len`` tokens
(adapters put the question and instruction last, so long HotpotQA contexts lose their start), and
``"error"`` raises naming the row. Dropped and truncated rows are counted (the trainer drops, and
logs ``data/prompts_dropped``); a data set in which every prompt is too long raises ``DataError``.

Expert responses become the SFT target: their tokens followed by eos (none when the row has no
expert response), optionally cut to ``max_expert_len`` tokens (counted; the cut drops the eos).
"""
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from superrl.data.rows import DataError

TEMPLATES = ("chat", "plain")
OVERLONG_POLICIES = ("drop", "truncate", "error")
DEFAULT_PLAIN_TEMPLATE = "{prompt}\n"


@dataclass(frozen=True)
class Example:
    row_id: int  # index of the row in the loaded rows
    data_source: str
    ground_truth: str | list[str]
    prompt_text: str
    prompt_ids: list[int]
    expert_ids: list[int]  # SFT target: expert response tokens + eos; [] when the row has none
    origin: str


@dataclass(frozen=True)
class ExampleSet:
    examples: list[Example]
    prompts_dropped: int
    prompts_truncated: int
    experts_truncated: int

    @property
    def data_sources(self) -> set[str]:
        return {example.data_source for example in self.examples}


class PromptFormatter:
    def __init__(self, tokenizer, template: str = "chat", plain_template: str = DEFAULT_PLAIN_TEMPLATE):
        if template not in TEMPLATES:
            raise ValueError(f"prompt template must be one of {TEMPLATES}, got {template!r}")
        if template == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; use the plain prompt template")
        if template == "plain" and "{prompt}" not in plain_template:
            raise ValueError(f"plain_template must contain '{{prompt}}', got {plain_template!r}")
        self.tokenizer, self.template, self.plain_template = tokenizer, template, plain_template

    def format(self, prompt: str | list[dict]) -> str:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if self.template == "chat":
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.plain_template.replace("{prompt}", "\n".join(m["content"] for m in messages))

    def encode(self, texts: list[str]) -> list[list[int]]:
        # Chat templates write their special tokens into the text; plain prompts get the tokenizer's own (BOS).
        return self.tokenizer(texts, add_special_tokens=self.template == "plain")["input_ids"]


def build_examples(rows: Sequence[dict], tokenizer, *, max_prompt_len: int, overlong: str = "drop",
                   template: str = "chat", plain_template: str = DEFAULT_PLAIN_TEMPLATE,
                   max_expert_len: int | None = None) -> ExampleSet:
    if overlong not in OVERLONG_POLICIES:
        raise ValueError(f"overlong prompt policy must be one of {OVERLONG_POLICIES}, got {overlong!r}")
    if not rows:
        raise DataError("no rows to build examples from")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token, which ends every expert response")
    formatter = PromptFormatter(tokenizer, template, plain_template)
    texts = [formatter.format(row["prompt"]) for row in rows]
    encoded = formatter.encode(texts)
    examples, counts = [], Counter()
    for row_id, (row, text, ids, expert) in enumerate(zip(rows, texts, encoded, _expert_ids(rows, tokenizer))):
        ids = _fit_prompt(ids, max_prompt_len, overlong, row["origin"], counts)
        if ids is None:
            continue
        if max_expert_len is not None and len(expert) > max_expert_len:
            expert = expert[:max_expert_len]
            counts["experts_truncated"] += 1
        examples.append(Example(row_id, row["data_source"], row["ground_truth"], text, ids, expert, row["origin"]))
    if not examples:  # said here: the data loader would only see "0 examples"
        raise DataError(f"all {len(rows)} prompts are longer than data.max_prompt_len={max_prompt_len} tokens "
                        f"(the shortest has {min(map(len, encoded))}); raise data.max_prompt_len")
    return ExampleSet(examples, counts["prompts_dropped"], counts["prompts_truncated"], counts["experts_truncated"])


def _fit_prompt(ids: list[int], max_len: int, overlong: str, origin: str, counts: Counter) -> list[int] | None:
    """Apply the overlong policy: the ids to keep, or None to drop the row."""
    if len(ids) <= max_len:
        return ids
    if overlong == "error":
        raise DataError(f"{origin}: prompt has {len(ids)} tokens > data.max_prompt_len {max_len}")
    if overlong == "drop":
        counts["prompts_dropped"] += 1
        return None
    counts["prompts_truncated"] += 1
    return ids[-max_len:]


def _expert_ids(rows: Sequence[dict], tokenizer) -> list[list[int]]:
    responses = [row["expert_response"] for row in rows]
    encoded = tokenizer(responses, add_special_tokens=False)["input_ids"]
    return [ids + [tokenizer.eos_token_id] if response else [] for response, ids in zip(responses, encoded)]
