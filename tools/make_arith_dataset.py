"""Write GSM8K-schema arithmetic word problems (``question``, ``answer`` with worked steps ending in
``#### N``, ``data_source``) as JSON lines: the sparse-reward task for tiny models trained on CPU.

    python tools/make_arith_dataset.py --level 1 --n 2000 --seed 0 --out arith_l1_train.jsonl
    python tools/make_arith_dataset.py --level 3 --n 200 --seed 1 --out arith_l3_eval.jsonl \
        --exclude arith_l3_train.jsonl

A problem starts from a quantity and applies ``steps`` operations, one short phrase each, with
words the tiny tokenizer of ``tools/make_tiny_model.py`` knows; the answer shows one line per
step ("23 + 45 = 68") and then "#### 68". Levels:

    level  steps  digits  operations
      1      1      2     add                 (learnable quickly)
      2      2      2     add, subtract
      3      3      2     add, subtract, multiply (x2..x5)
      4      4      3     add, subtract, multiply
      5      5      3     ...                 (out of distribution: more steps)
      6      6      4     ...                 (out of distribution: more steps, bigger numbers)

With the tiny tokenizer of ``tools/make_tiny_model.py`` and its chat template, prompts are about
50 tokens at level 1, at most 64 at level 2, at most 96 at level 4 and up to ~120 at level 6.
``--steps`` / ``--digits`` override a level's shape for other out-of-distribution sets. Output is
deterministic for a seed. Questions are unique within a file; for disjoint train/eval sets use a
different seed for eval *and* ``--exclude`` the train file (different seeds alone can repeat a
question, since level 1 has only ~10^4 number pairs per name and item).
"""
import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

NAMES = (("Tom", "He"), ("Sara", "She"), ("Ben", "He"), ("Mia", "She"), ("Leo", "He"), ("Ana", "She"))
ITEMS = ("apples", "books", "coins", "cookies", "boxes", "cards", "pens", "eggs")
MAX_FACTOR = 5  # multiplications stay small so answers stay a few tokens long


@dataclass(frozen=True)
class Shape:
    steps: int
    digits: int
    operations: tuple[str, ...]


LEVELS = {
    1: Shape(1, 2, ("add",)),
    2: Shape(2, 2, ("add", "sub")),
    3: Shape(3, 2, ("add", "sub", "mul")),
    4: Shape(4, 3, ("add", "sub", "mul")),
    5: Shape(5, 3, ("add", "sub", "mul")),
    6: Shape(6, 4, ("add", "sub", "mul")),
}


def make_problem(rng: random.Random, shape: Shape) -> tuple[str, str]:
    """One ``(question, answer)`` pair, e.g. "Tom has 23 apples. He buys 45 more, sells 12.
    How many apples now?" with the answer lines "23 + 45 = 68", "68 - 12 = 56", "#### 56"."""
    (name, pronoun), item = rng.choice(NAMES), rng.choice(ITEMS)
    largest = 10 ** shape.digits - 1
    start = value = rng.randint(1, largest)
    phrases, lines = [], []
    for _ in range(shape.steps):
        operation = rng.choice(shape.operations)
        if operation == "sub" and value < 2:
            operation = "add"  # keep every quantity positive
        phrase, symbol, operand, result = _step(rng, operation, value, largest)
        phrases.append(phrase)
        lines.append(f"{value} {symbol} {operand} = {result}")
        value = result
    question = f"{name} has {start} {item}. {pronoun} {', '.join(phrases)}. How many {item} now?"
    return question, "\n".join(lines + [f"#### {value}"])


def _step(rng: random.Random, operation: str, value: int, largest: int) -> tuple[str, str, int, int]:
    """``(phrase, symbol, operand, result)`` of one operation on ``value``."""
    if operation == "add":
        operand = rng.randint(1, largest)
        return f"buys {operand} more", "+", operand, value + operand
    if operation == "sub":
        operand = rng.randint(1, min(value - 1, largest))
        return f"sells {operand}", "-", operand, value - operand
    operand = rng.randint(2, MAX_FACTOR)
    return f"has {operand} times as many", "*", operand, value * operand


def generate(n: int, shape: Shape, seed: int, data_source: str, exclude: set[str] = frozenset()) -> list[dict]:
    rng, seen, rows = random.Random(seed), set(exclude), []
    for _ in range(100 * n):
        if len(rows) == n:
            return rows
        question, answer = make_problem(rng, shape)
        if question not in seen:
            seen.add(question)
            rows.append({"question": question, "answer": answer, "data_source": data_source})
    raise SystemExit(f"could only make {len(rows)} distinct questions of {n} for {shape}; lower --n")


def read_questions(paths: list[str]) -> set[str]:
    questions = set()
    for path in paths:
        with open(path, encoding="utf-8") as lines:
            questions.update(json.loads(line)["question"] for line in lines if line.strip())
    return questions


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--level", type=int, choices=sorted(LEVELS), default=1)
    p.add_argument("--steps", type=int, help="override the level's number of operations")
    p.add_argument("--digits", type=int, help="override the level's number size (max digits per number)")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .jsonl file")
    p.add_argument("--data-source", help="default: arith_l<level>, or arith_s<steps>_d<digits> with overrides")
    p.add_argument("--exclude", nargs="*", default=[], help=".jsonl files whose questions must not repeat")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    level = LEVELS[args.level]
    shape = Shape(args.steps or level.steps, args.digits or level.digits, level.operations)
    if shape.steps < 1 or shape.digits < 1:
        raise SystemExit("--steps and --digits must be >= 1")
    default_source = f"arith_l{args.level}" if shape == level else f"arith_s{shape.steps}_d{shape.digits}"
    rows = generate(args.n, shape, args.seed, args.data_source or default_source, read_questions(args.exclude))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)
    print(f"wrote {len(rows)} level-{args.level} problems ({shape}) to {args.out}")


if __name__ == "__main__":
    main()
