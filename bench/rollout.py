"""Rollout throughput: EmbeddedEngine vs `transformers` generate (target: >= 2x tokens/s).

    python bench/rollout.py [--sizes tiny,small] [--batch 32] [--max-tokens 64,256] [--repeats 3]
                            [--threads N] [--vllm] [--profile] [--out bench/results/rollout.json]

Both engines get the same random-init model, the same prompts (random lengths), the same batch and
exactly `--max-tokens` new tokens per prompt (greedy; eos ignored: `ignore_eos` on ours,
`min_new_tokens` on HF). Runs are interleaved and repeated; tokens/s is taken from each engine's
fastest run (the least disturbed one on a shared machine), both per wall second and per process
CPU second (the robust figure when other jobs share the cores; use --threads 1 there), and every
time is kept in the JSON.

Adding an engine: write `<name>_generate_fn(model_dir, dtype) -> fn(prompts, max_tokens) -> number
of generated tokens` and register it in `engine_factories` (that is all `--vllm` does).
"""
import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from superrl.rollout import EmbeddedEngine, SamplingParams  # noqa: E402

MODEL_SIZES = {  # make_tiny_model.py arguments
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, vocab=512),  # the tool's defaults
    "small": dict(hidden=256, layers=4, heads=4, kv_heads=2, vocab=512),
}
FIRST_REGULAR_TOKEN = 5  # ids below are the tokenizer's special tokens (pad, bos, eos, ...)


def make_model(arch: str, size: str, root: Path) -> str:
    out = root / f"{arch}-{size}"
    if out.exists():
        return str(out)
    args = [f"--{key.replace('_', '-')}={value}" for key, value in MODEL_SIZES[size].items()]
    subprocess.run([sys.executable, str(ROOT / "tools/make_tiny_model.py"), "--arch", arch,
                    "--out-dir", str(out), *args], check=True, capture_output=True)
    return str(out)


def make_prompts(count: int, min_len: int, max_len: int, vocab: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    return [[rng.randrange(FIRST_REGULAR_TOKEN, vocab) for _ in range(rng.randint(min_len, max_len))]
            for _ in range(count)]


# ------------------------------------------------------------------ engines under test
def contract_generate_fn(engine):
    """Greedy, fixed-length generation through the RolloutEngine contract."""
    def generate(prompts, max_tokens):
        outputs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens),
                                  ignore_eos=True)
        return sum(len(c.token_ids) for completions in outputs for c in completions)
    return generate


def embedded_generate_fn(model_dir: str, dtype: str):
    return contract_generate_fn(EmbeddedEngine(model_dir, dtype=dtype))


def hf_generate_fn(model_dir: str, dtype: str):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    pad = model.config.pad_token_id or 0

    @torch.inference_mode()
    def generate(prompts, max_tokens):
        longest = max(len(p) for p in prompts)  # left padding, the way HF batches generation
        ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
        out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max_tokens,
                             min_new_tokens=max_tokens, pad_token_id=pad)
        return (out.shape[1] - longest) * len(prompts)
    return generate


def vllm_generate_fn(model_dir: str, dtype: str):
    """The vLLM column (run in vLLM's own venv): same contract, VLLMEngine.generate takes ignore_eos."""
    from superrl.rollout import VLLMEngine
    return contract_generate_fn(VLLMEngine(model_dir, dtype=dtype))


def engine_factories(args) -> dict:
    factories = {"transformers": hf_generate_fn, "embedded": embedded_generate_fn}
    if args.vllm:
        factories["vllm"] = vllm_generate_fn
    return factories


# ------------------------------------------------------------------ measurement
def time_once(generate, prompts: list, max_tokens: int) -> tuple:
    """(wall seconds, process CPU seconds) of one call. CPU time is what the work costs when other
    jobs share the cores; it equals wall time on an idle machine with one torch thread."""
    wall, cpu = time.perf_counter(), time.process_time()
    tokens = generate(prompts, max_tokens)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if tokens != len(prompts) * max_tokens:
        raise RuntimeError(f"generated {tokens} tokens, expected {len(prompts) * max_tokens}")
    return wall, cpu


def bench_engines(generators: dict, prompts: list, max_tokens: int, repeats: int) -> dict:
    """Interleaved timing of each `fn(prompts, max_tokens)`; one warm-up run each."""
    for generate in generators.values():
        time_once(generate, prompts, min(max_tokens, 4))
    times = {name: [] for name in generators}
    for _ in range(repeats):
        for name, generate in generators.items():
            times[name].append(time_once(generate, prompts, max_tokens))
    tokens = len(prompts) * max_tokens
    return {name: {"wall_s": [w for w, _ in runs], "cpu_s": [c for _, c in runs], "tokens": tokens,
                   "tokens_per_s": tokens / min(w for w, _ in runs),
                   "tokens_per_cpu_s": tokens / min(c for _, c in runs)}
            for name, runs in times.items()}


def print_profile(name: str, generate, prompts: list, max_tokens: int, rows: int = 15) -> None:
    """torch.profiler over one (already warm) call: where the time goes, by aten op."""
    from torch.profiler import profile
    with profile() as prof:
        generate(prompts, max_tokens)
    print(f"--- profile: {name}, {len(prompts)} prompts x {max_tokens} new tokens")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def bench_model(args, arch: str, size: str, max_tokens: int, root: Path) -> dict:
    model_dir = make_model(arch, size, root)
    prompts = make_prompts(args.batch, args.min_prompt_len, args.max_prompt_len, MODEL_SIZES[size]["vocab"])
    generators = {name: factory(model_dir, args.dtype) for name, factory in engine_factories(args).items()}
    results = bench_engines(generators, prompts, max_tokens, args.repeats)
    if args.profile:
        for name, generate in generators.items():
            print_profile(f"{arch}-{size} {name}", generate, prompts, max_tokens)
    for result in results.values():
        for key in ("tokens_per_s", "tokens_per_cpu_s"):
            result[f"{key}_vs_transformers"] = result[key] / results["transformers"][key]
    return {"arch": arch, "size": size, **MODEL_SIZES[size], "batch": args.batch,
            "prompt_len": [args.min_prompt_len, args.max_prompt_len], "max_tokens": max_tokens,
            "dtype": args.dtype, "engines": results}


def print_table(rows: list) -> None:
    print(f"{'model':<14}{'batch':>6}{'prompt':>8}{'new':>5}  {'engine':<13}"
          f"{'tokens/s':>10}{'vs HF':>8}{'tokens/cpu-s':>14}{'vs HF':>8}")
    for row in rows:
        model = f"{row['arch']}-{row['size']}"
        prompt = "{}-{}".format(*row["prompt_len"])
        for name, r in row["engines"].items():
            print(f"{model:<14}{row['batch']:>6}{prompt:>8}{row['max_tokens']:>5}  {name:<13}"
                  f"{r['tokens_per_s']:>10.0f}{r['tokens_per_s_vs_transformers']:>7.2f}x"
                  f"{r['tokens_per_cpu_s']:>14.0f}{r['tokens_per_cpu_s_vs_transformers']:>7.2f}x")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="llama", help="comma list of llama,qwen2")
    p.add_argument("--sizes", default="tiny,small", help=f"comma list of {','.join(MODEL_SIZES)}")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--min-prompt-len", type=int, default=16)
    p.add_argument("--max-prompt-len", type=int, default=64)
    p.add_argument("--max-tokens", default="64,256", help="comma list: new tokens per prompt")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--vllm", action="store_true", help="add a vLLM column (needs vLLM installed)")
    p.add_argument("--profile", action="store_true",
                   help="after timing, print a torch.profiler op table of one call per engine (untimed)")
    p.add_argument("--out", default=str(ROOT / "bench/results/rollout.json"))
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_model(args, arch, size, int(max_tokens), Path(tmp))
                for arch in args.archs.split(",") for size in args.sizes.split(",")
                for max_tokens in args.max_tokens.split(",")]
    print_table(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": torch.get_num_threads(), "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
