"""Data loading (all schemas, jsonl + parquet), malformed rows, prompts/tokenisation, resumable
batches, the reasoning-gym source and tools/make_arith_dataset.py."""
import importlib.util
import json
import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from superrl.data import DataError, PromptDataLoader, build_examples, load_rows
from superrl.rewards import gsm8k

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "superrl" / "data" / "fixtures"
GSM8K, MATH, HOTPOTQA = (FIXTURES / f"{name}_sample.jsonl" for name in ("gsm8k", "math", "hotpotqa"))
ARITH_TOOL = ROOT / "tools" / "make_arith_dataset.py"


@pytest.fixture(scope="module")
def tokenizer():
    spec = importlib.util.spec_from_file_location("make_tiny_model", ROOT / "tools" / "make_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tokenizer(vocab_size=512, seed=0)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_jsonl(path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def write_parquet(path, records) -> Path:
    import datasets

    datasets.Dataset.from_list(records).to_parquet(str(path))
    return path


def without_origin(rows):
    return [{key: value for key, value in row.items() if key != "origin"} for row in rows]


def hf_hotpotqa_layout(record: dict) -> dict:
    """The HF hub's column layout (dicts of lists), the only one Arrow can store."""
    context, facts = record["context"], record["supporting_facts"]
    return {**record, "context": {"title": [c[0] for c in context], "sentences": [c[1] for c in context]},
            "supporting_facts": {"title": [f[0] for f in facts], "sent_id": [f[1] for f in facts]}}


GENERIC_RECORDS = [
    {"prompt": "What is 2 + 3? Give the final answer after ####.", "ground_truth": "5",
     "expert_response": "2 + 3 = 5\n#### 5", "data_source": "arith"},
    {"prompt": [{"role": "user", "content": "Capital of France? Answer: <city>"}], "ground_truth": "Paris",
     "expert_response": "", "data_source": "hotpotqa"},
]


@pytest.mark.parametrize("fixture, count, source",
                         [(GSM8K, 20, "gsm8k"), (MATH, 15, "math"), (HOTPOTQA, 8, "hotpotqa")])
def test_fixtures_load_from_jsonl_and_parquet(tmp_path, fixture, count, source):
    from_jsonl = load_rows([fixture])
    assert len(from_jsonl.rows) == count and from_jsonl.data_sources == {source}
    assert from_jsonl.rows[2]["origin"] == f"{fixture} line 3"
    records = read_jsonl(fixture)
    if source == "hotpotqa":
        records = [hf_hotpotqa_layout(record) for record in records]
    from_parquet = load_rows(write_parquet(tmp_path / "rows.parquet", records))
    assert without_origin(from_parquet.rows) == without_origin(from_jsonl.rows)
    assert from_parquet.rows[2]["origin"].endswith("rows.parquet row 3")


def test_generic_rows_load_from_jsonl_and_parquet(tmp_path):
    from_jsonl = load_rows(str(write_jsonl(tmp_path / "g.jsonl", GENERIC_RECORDS)))
    from_parquet = load_rows([write_parquet(tmp_path / "a.parquet", GENERIC_RECORDS[:1]),
                              write_parquet(tmp_path / "b.parquet", GENERIC_RECORDS[1:])])
    assert without_origin(from_jsonl.rows) == without_origin(from_parquet.rows) == GENERIC_RECORDS


def test_generic_row_variants(tmp_path):
    records = [{"prompt": "q", "ground_truth": 42, "data_source": "gsm8k"},  # number, no expert column
               {"prompt": "q", "reward_model": {"ground_truth": "7"}, "data_source": "gsm8k"},  # verl layout
               {"prompt": "q", "ground_truth": ["NYC", "New York"], "expert_response": None, "data_source": "hotpotqa"}]
    rows = load_rows(write_jsonl(tmp_path / "g.jsonl", records)).rows
    assert [row["ground_truth"] for row in rows] == ["42", "7", ["NYC", "New York"]]
    assert [row["expert_response"] for row in rows] == ["", "", ""]


def test_gsm8k_adapter():
    row = load_rows(GSM8K).rows[12]  # "#### 1,728" with a calculator annotation
    assert row["ground_truth"] == "1728"
    assert row["prompt"].endswith("How many sticks of chalk does the school get?\nGive the final answer after ####.")
    assert "<<" not in row["expert_response"] and row["expert_response"].endswith("#### 1,728")


def test_gsm8k_fixture_arithmetic_is_right():
    for record in read_jsonl(GSM8K):
        results = []
        for expression, result in re.findall(r"<<([^=>]+)=([^>]+)>>", record["answer"]):
            assert eval(expression) == pytest.approx(float(result)), record["answer"]  # our own fixture text
            results.append(float(result))
        assert gsm8k.to_decimal(gsm8k.extract_strict(record["answer"])) == pytest.approx(results[-1])


def test_math_adapter_takes_last_boxed_answer():
    rows = load_rows(MATH).rows
    assert rows[0]["ground_truth"] == "\\frac{5}{6}"
    assert rows[13]["ground_truth"] == "\\frac{\\sqrt{2}}{2}"
    assert rows[14]["ground_truth"].startswith("\\begin{pmatrix}")
    assert all(row["prompt"].endswith("Put the final answer in \\boxed{}.") for row in rows)


def test_hotpotqa_adapter_puts_context_first_and_question_last():
    row = load_rows(HOTPOTQA).rows[0]
    assert row["prompt"].startswith("Amélie: Amélie is a 2001 romantic comedy film. It was directed by")
    assert "Jean-Pierre Jeunet: Jean-Pierre Jeunet is a film director." in row["prompt"]
    assert row["prompt"].endswith("Question: In which country was the director of the film Amélie born?\n"
                                  "Give a short final answer after 'Answer:'.")
    assert row["expert_response"] == ("It was directed by Jean-Pierre Jeunet. He was born in Roanne, France, "
                                      "in 1953.\nAnswer: France")


GOOD_GSM8K = {"question": "Tom has 2 apples. He buys 3 more. How many apples now?", "answer": "2 + 3 = 5\n#### 5"}
MALFORMED = [  # (bad line, expected message after "<file> line 3: ")
    ('{"question": "q", "answer": ', "invalid JSON"),
    ('["question", "answer"]', "expected a JSON object, got list"),
    ({"question": "q"}, "missing column 'answer'"),
    ({"question": 7, "answer": "#### 1"}, "column 'question' must be a string, got int"),
    ({"question": "   ", "answer": "#### 1"}, "column 'question' is empty"),
    ({"question": "q", "answer": "no final answer"}, "column 'answer' does not end in '#### <number>'"),
    ({"question": "q", "answer": "#### 5", "data_source": ""}, "column 'data_source' is empty"),
    ({"question": None, "answer": "#### 1"}, "column 'question' is null"),
    ({"question": ["q"], "answer": "#### 1"}, "column 'question' must be a string, got list"),
]


@pytest.mark.parametrize("bad, message", MALFORMED)
def test_malformed_row_names_file_and_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD_GSM8K, GOOD_GSM8K, bad, GOOD_GSM8K])
    with pytest.raises(DataError, match=re.escape(f"{path} line 3: {message}")):
        load_rows([path])


def test_skip_bad_rows_counts_them_and_keeps_line_numbers(tmp_path):
    lines = [GOOD_GSM8K, "", *(bad for bad, _ in MALFORMED), GOOD_GSM8K]  # line 2 is blank, not a row
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    loaded = load_rows([path], skip_bad_rows=True)
    assert len(loaded.rows) == 2 and len(loaded.skipped) == len(MALFORMED)
    assert loaded.rows[1]["origin"] == f"{path} line {len(lines)}"
    assert [message.split(":")[0] for message in loaded.skipped] == [f"{path} line {n}"
                                                                     for n in range(3, 3 + len(MALFORMED))]


def test_skipped_rows_are_logged_with_their_cause(tmp_path, caplog):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD_GSM8K, *(bad for bad, _ in MALFORMED)])
    with caplog.at_level(logging.WARNING, logger="superrl.data.row_files"):
        load_rows([path], skip_bad_rows=True)
    [record] = caplog.records
    text = record.getMessage()
    assert text.startswith(f"superrl: skipped {len(MALFORMED)} malformed dataset rows (data.skip_bad_rows=true)")
    assert f"{path} line 2: invalid JSON" in text and f"{path} line 6: column 'question' is empty" in text
    assert f"... and {len(MALFORMED) - 5} more" in text  # the rest are counted, not quoted


def test_line_that_is_not_utf8_names_its_line_and_others_still_load(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(GOOD_GSM8K).encode()
    path.write_bytes(b"\n".join([b"\xef\xbb\xbf" + good, b'{"question": "caf\xe9", "answer": "#### 1"}', good]) + b"\n")
    with pytest.raises(DataError, match=re.escape(f"{path} line 2: not valid UTF-8 (byte 18: invalid continuation byte)")):
        load_rows(path)
    loaded = load_rows(path, skip_bad_rows=True)  # line 1 starts with a byte-order mark: still a row
    assert [row["origin"] for row in loaded.rows] == [f"{path} line 1", f"{path} line 3"]


@pytest.mark.parametrize("record, message", [
    ({"problem": "p", "solution": "no box here"}, "column 'solution' has no \\boxed{} answer"),
    ({"prompt": "", "ground_truth": "1", "data_source": "x"}, "column 'prompt' is empty"),
    ({"prompt": [{"role": "user"}], "ground_truth": "1", "data_source": "x"}, "prompt message 1 must be"),
    ({"prompt": "p", "ground_truth": {"a": 1}, "data_source": "x"}, "column 'ground_truth' must be"),
    ({"prompt": "p", "data_source": "x"}, "missing column 'ground_truth'"),
    ({"prompt": "p", "ground_truth": None, "data_source": "x"}, "column 'ground_truth' is null"),
    ({"prompt": "p", "ground_truth": math.nan, "data_source": "x"}, "column 'ground_truth' is nan, not a finite"),
    ({"prompt": "p", "reward_model": {}, "data_source": "x"}, "column 'reward_model': missing column 'ground_truth'"),
    ({"prompt": 5, "ground_truth": "1", "data_source": "x"}, "column 'prompt' must be a string, got int"),
    ({"prompt": [], "ground_truth": "1", "data_source": "x"}, "column 'prompt' is empty"),
    ({"prompt": "p", "ground_truth": "1"}, "missing column 'data_source'"),
    ({"prompt": "p", "ground_truth": "1", "expert_response": 3, "data_source": "x"},
     "column 'expert_response' must be a string, got int"),
    ({"question": "q", "answer": "a", "context": [["t", "not a list"]], "supporting_facts": []},
     "column 'context' has an entry that is not [title, [sentences]]"),
    ({"question": "q", "answer": "a", "context": [["t", ["s"]]], "supporting_facts": [["t", "0"]]},
     "column 'supporting_facts' must be"),
    ({"text": "hello"}, "cannot tell the schema from columns ['text']"),
])
def test_malformed_rows_of_each_schema(tmp_path, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [record])
    with pytest.raises(DataError, match=re.escape(f"{path} line 1: {message}")):
        load_rows(path)


def test_malformed_parquet_row_names_row(tmp_path):
    path = write_parquet(tmp_path / "bad.parquet", [GOOD_GSM8K, {"question": "", "answer": "#### 1"}])
    with pytest.raises(DataError, match=re.escape(f"{path} row 2: column 'question' is empty")):
        load_rows(path)
    assert len(load_rows(path, skip_bad_rows=True).skipped) == 1


@pytest.mark.parametrize("records, message", [
    ([{"question": 7, "answer": "#### 1"}], "row 1: column 'question' must be a string, got int"),  # typed column
    ([GOOD_GSM8K, {"question": "q", "answer": None}], "row 2: column 'answer' is null"),  # Arrow's missing value
    ([{"prompt": "p", "ground_truth": 1.5, "data_source": "x"}, {"prompt": "p", "ground_truth": math.inf,
                                                                 "data_source": "x"}],
     "row 2: column 'ground_truth' is inf, not a finite number"),
])
def test_parquet_column_of_the_wrong_type_names_row(tmp_path, records, message):
    path = write_parquet(tmp_path / "bad.parquet", records)
    with pytest.raises(DataError, match=re.escape(f"{path} {message}")):
        load_rows(path)


def test_unreadable_parquet_file_names_it_even_when_skipping_rows(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not a parquet file" * 10)
    with pytest.raises(DataError, match=re.escape(f"{path}: not a readable parquet file")):
        load_rows(path, skip_bad_rows=True)  # a whole file is not a row: never skipped


@pytest.mark.parametrize("name, message", [("rows.csv", "unsupported data file type '.csv'"),
                                           ("missing.jsonl", "no such data file")])
def test_bad_file_paths(tmp_path, name, message):
    with pytest.raises(DataError, match=re.escape(message)):
        load_rows(tmp_path / name)


def test_file_with_only_bad_rows_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ["{"])
    with pytest.raises(DataError, match=re.escape(f"(1 skipped; the first: {path} line 1: invalid JSON")):
        load_rows(path, skip_bad_rows=True)


def test_chat_and_plain_prompt_formatting(tokenizer):
    rows = load_rows(GSM8K).rows[:1]
    chat = build_examples(rows, tokenizer, max_prompt_len=512).examples[0]
    assert chat.prompt_text == f"<|user|>{rows[0]['prompt']}\n<|assistant|>"
    assert chat.prompt_ids == tokenizer(chat.prompt_text, add_special_tokens=False)["input_ids"]
    plain = build_examples(rows, tokenizer, max_prompt_len=512, template="plain",
                           plain_template="Q: {prompt}\nA:").examples[0]
    assert plain.prompt_text == f"Q: {rows[0]['prompt']}\nA:"
    chat_messages = [{**rows[0], "prompt": [{"role": "user", "content": "hi"}]}]
    assert build_examples(chat_messages, tokenizer, max_prompt_len=512).examples[0].prompt_text == (
        "<|user|>hi\n<|assistant|>")


def test_expert_tokens_end_with_eos(tokenizer):
    rows = load_rows(GSM8K).rows[:3] + [{**load_rows(GSM8K).rows[3], "expert_response": ""}]
    examples = build_examples(rows, tokenizer, max_prompt_len=512).examples
    for row, example in zip(rows[:3], examples):
        assert example.expert_ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(example.expert_ids[:-1]) == row["expert_response"]
    assert examples[3].expert_ids == []
    capped = build_examples(rows, tokenizer, max_prompt_len=512, max_expert_len=5)
    assert capped.experts_truncated == 3 and [len(e.expert_ids) for e in capped.examples] == [5, 5, 5, 0]


def test_prompt_length_policy(tokenizer):
    rows = load_rows(HOTPOTQA).rows
    lengths = [len(e.prompt_ids) for e in build_examples(rows, tokenizer, max_prompt_len=10_000).examples]
    limit = sorted(lengths)[len(lengths) // 2]
    n_long = sum(length > limit for length in lengths)
    dropped = build_examples(rows, tokenizer, max_prompt_len=limit)
    assert dropped.prompts_dropped == n_long and len(dropped.examples) == len(rows) - n_long
    assert all(len(e.prompt_ids) <= limit for e in dropped.examples)
    truncated = build_examples(rows, tokenizer, max_prompt_len=limit, overlong="truncate")
    assert truncated.prompts_truncated == n_long and len(truncated.examples) == len(rows)
    for example, full_length in zip(truncated.examples, lengths):
        full = tokenizer(example.prompt_text, add_special_tokens=False)["input_ids"]
        assert example.prompt_ids == full[-limit:] and len(full) == full_length  # keeps the question end
    with pytest.raises(DataError, match=re.escape(f"{HOTPOTQA} line")):
        build_examples(rows, tokenizer, max_prompt_len=limit, overlong="error")
    with pytest.raises(ValueError, match="overlong"):
        build_examples(rows, tokenizer, max_prompt_len=limit, overlong="cut")


def test_every_prompt_too_long_is_an_error_not_an_empty_data_set(tokenizer):
    rows = load_rows(GSM8K).rows
    shortest = min(len(e.prompt_ids) for e in build_examples(rows, tokenizer, max_prompt_len=10_000).examples)
    with pytest.raises(DataError, match=re.escape(f"all {len(rows)} prompts are longer than data.max_prompt_len="
                                                  f"{shortest - 1} tokens (the shortest has {shortest})")):
        build_examples(rows, tokenizer, max_prompt_len=shortest - 1)
    assert len(build_examples(rows, tokenizer, max_prompt_len=shortest).examples) >= 1


def batches(loader, count):
    return [[example for example in next(loader)] for _ in range(count)]


def test_shuffling_is_deterministic_per_seed_and_epoch():
    items = list(range(10))
    first, again = PromptDataLoader(items, 3, seed=1), PromptDataLoader(items, 3, seed=1)
    assert batches(first, 9) == batches(again, 9)
    epochs = batches(PromptDataLoader(items, 3, seed=1), 9)
    assert epochs[:3] != epochs[3:6]  # each epoch reshuffles
    assert all(len(set(sum(epochs[i:i + 3], []))) == 9 for i in (0, 3, 6))  # 3 full batches, last row dropped
    assert batches(PromptDataLoader(items, 3, seed=2), 3) != epochs[:3]


@pytest.mark.parametrize("consumed", [0, 1, 2, 3, 4, 7])
def test_resume_mid_epoch_replays_the_remaining_sequence(consumed):
    items = [f"row{i}" for i in range(11)]
    original = PromptDataLoader(items, 4, seed=5)
    batches(original, consumed)
    state = json.loads(json.dumps(original.state_dict()))  # checkpoints store it as JSON
    expected = batches(original, 6)
    resumed = PromptDataLoader(items, 4, seed=5)
    resumed.load_state_dict(state)
    assert batches(resumed, 6) == expected


def test_resume_refuses_another_dataset_or_seed():
    state = PromptDataLoader(list(range(8)), 2, seed=0).state_dict()
    for loader in (PromptDataLoader(list(range(9)), 2, seed=0), PromptDataLoader(list(range(8)), 2, seed=1)):
        with pytest.raises(ValueError, match="would not replay"):
            loader.load_state_dict(state)
    with pytest.raises(ValueError, match="prompts_per_step"):
        PromptDataLoader(list(range(3)), 4)


def test_reasoning_gym_rows_are_seeded_and_score_with_gsm8k():
    rows = load_rows(["reasoning_gym:gsm_symbolic?size=4&seed=3"]).rows
    assert rows == load_rows("reasoning_gym:gsm_symbolic?size=4&seed=3").rows
    assert rows != load_rows("reasoning_gym:gsm_symbolic?size=4&seed=4").rows
    for row in rows:
        assert row["data_source"] == "gsm_symbolic" and row["prompt"].endswith("Give the final answer after ####.")
        assert gsm8k.compute_score(row["expert_response"], row["ground_truth"]) == 1.0
    with pytest.raises(DataError, match="expected reasoning_gym:gsm_symbolic"):
        load_rows("reasoning_gym:gsm_symbolic?size=4&colour=red")


def make_arith(tmp_path, name, *args) -> Path:
    out = tmp_path / name
    subprocess.run([sys.executable, str(ARITH_TOOL), "--out", str(out), *args], check=True, capture_output=True)
    return out


def solve_question(question: str) -> tuple[int, int]:
    """(answer, steps) computed from the question text alone, independently of the generator."""
    value = int(re.match(r"\w+ has (\d+) \w+\.", question).group(1))
    steps = re.findall(r"(buys (\d+) more|sells (\d+)|has (\d+) times as many)", question.split(". ", 1)[1])
    for _, added, sold, factor in steps:
        value = value + int(added) if added else value - int(sold) if sold else value * int(factor)
    return value, len(steps)


def check_worked_steps(answer: str) -> int:
    """Every "a op b = c" line is right and chains into the next; returns the final answer."""
    *lines, final = answer.splitlines()
    previous = None
    for line in lines:
        left, op, right, _, result = line.split()
        assert previous is None or int(left) == previous
        previous = {"+": int(left) + int(right), "-": int(left) - int(right), "*": int(left) * int(right)}[op]
        assert previous == int(result)
    assert final == f"#### {previous}"
    return previous


@pytest.mark.parametrize("level, steps, digits", [(1, 1, 2), (2, 2, 2), (3, 3, 2), (4, 4, 3), (6, 6, 4)])
def test_arith_problems_are_correct(tmp_path, level, steps, digits):
    rows = read_jsonl(make_arith(tmp_path, "a.jsonl", "--level", str(level), "--n", "40", "--seed", "3"))
    assert len(rows) == 40 and len({row["question"] for row in rows}) == 40
    for row in rows:
        answer, question_steps = solve_question(row["question"])
        assert question_steps == steps and check_worked_steps(row["answer"]) == answer >= 1
        assert all(len(number) <= digits for number in re.findall(r"\d+", row["question"].split(" times")[0]))
        assert row["data_source"] == f"arith_l{level}"
    assert {row["data_source"] for row in load_rows(tmp_path / "a.jsonl").rows} == {f"arith_l{level}"}


@pytest.mark.parametrize("level, limit", [(1, 64), (2, 64), (4, 96)])
def test_arith_prompts_fit_tiny_model_budgets(tmp_path, tokenizer, level, limit):
    rows = load_rows(make_arith(tmp_path, "a.jsonl", "--level", str(level), "--n", "200")).rows
    assert build_examples(rows, tokenizer, max_prompt_len=limit).prompts_dropped == 0


def test_arith_is_deterministic_and_eval_can_exclude_train(tmp_path):
    level_1 = ("--level", "1", "--n", "300")
    train = make_arith(tmp_path, "train.jsonl", *level_1, "--seed", "0")
    assert train.read_bytes() == make_arith(tmp_path, "again.jsonl", *level_1, "--seed", "0").read_bytes()
    assert train.read_bytes() != make_arith(tmp_path, "other.jsonl", *level_1, "--seed", "1").read_bytes()
    held_out = make_arith(tmp_path, "eval.jsonl", *level_1, "--seed", "0", "--exclude", str(train))
    assert not {r["question"] for r in read_jsonl(train)} & {r["question"] for r in read_jsonl(held_out)}


def test_arith_out_of_distribution_overrides(tmp_path):
    rows = read_jsonl(make_arith(tmp_path, "ood.jsonl", "--level", "2", "--steps", "7", "--digits", "1", "--n", "20",
                                 "--data-source", "arith_ood"))
    for row in rows:
        answer, steps = solve_question(row["question"])
        assert steps == 7 and check_worked_steps(row["answer"]) == answer and row["data_source"] == "arith_ood"
