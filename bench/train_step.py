"""One SuperRL train phase (the actor update: old-log-prob pass if any, forward/backward, optimizer
step) at the SmolLM2-135M shape, TP1 and TP2, against the fp32 GEMM peak measured in the same run
and a plain `transformers` + torch AdamW step on the same rows (what a TRL user runs).

Scenarios (P prompts x n rollouts, recipe settings: examples/smollm2_gsm_symbolic_cpu.yaml):
  sft    every rollout reward 0: under hard_gate every prompt goes to SFT on its expert row
  mixed  half the prompts with rewards 1, 0, 1, 0, ... (PG on their rollouts), half all 0 (SFT)
Rows are synthetic with the recipe's lengths (prompts 90-120 tokens, expert solutions 85-115 + EOS,
responses 5/8 to all of rollout.max_tokens), random token ids: the cost does not depend on them.

Work. "Useful" rows are those with a nonzero loss weight: the expert rows of SFT prompts and the
rollout rows of PG prompts whose advantage is nonzero. FLOPs of training a row of L positions:
6 N L + 6 layers d L^2 (N: the matmul parameters, decoder layers plus the output projection, the
input embedding being a lookup; d = heads x head_dim; the causal half of QK^T and AV, forward and
backward); useful tokens are the rows' target tokens. GFLOP/s = useful FLOPs / train-phase time.
The GEMM peak is the best fp32 rate of a large square matmul and of the model's own GEMM shapes
(MKL and oneDNN, forward, input and weight gradient), all cores, measured before the phases run.

SuperRL: the real Trainer (bench/workers/train_step_phase.py) under torchrun, one fresh world per
TP size, timed per `Trainer._update_actor` call after one warm-up call. Baseline: a fresh process,
AutoModelForCausalLM + torch.optim.AdamW, micro-batches of the same size padded per micro-batch,
forward/backward of the useful rows only, one optimizer step; timed the same way.

  python bench/train_step.py [--hf-dir DIR | --random-init [--layers N]] [--prompts 4] [--n 4]
      [--repeats 2] [--tp 1 2] [--scenarios sft mixed] [--set key=value ...] [--out FILE]

Without --hf-dir: runs/smollm2-135m-instruct/hf (examples/smollm2_gsm_symbolic_cpu.sh converts it)
when present, else a random-init model of the same shape (tools/make_tiny_model.py).
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "workers" / "train_step_phase.py"
RECIPE = REPO_ROOT / "examples" / "smollm2_gsm_symbolic_cpu.yaml"
REAL_MODEL = REPO_ROOT / "runs" / "smollm2-135m-instruct" / "hf"
SMOLLM2_SHAPE = ["--arch", "llama", "--hidden", "576", "--ffn", "1536", "--vocab", "49152", "--max-positions", "8192",
                 "--rope-theta", "100000", "--tie-embeddings"]
SMOLLM2_HEADS = ("9", "3")  # query heads x 64, KV heads
# TP2 cannot split 9 x 64 heads / 3 KV heads; 12 x 48 / 4 KV heads has the same GEMM shapes (qkv
# 576 -> 960), parameter count and attention FLOPs, and splits over 2 or 4 ranks.
TP_SPLITTABLE_HEADS = ("12", "4")
SMOLLM2_LAYERS = 30
GEMM_ROWS = 2400  # a recipe micro-batch: 8 rows x ~300 positions
LOGPROB_CHUNK = 512  # rows per output-projection GEMM in the fused log-prob kernel


# ----------------------------------------------------------------------------- rows
def scenario(name: str, prompts: int, n: int, max_tokens: int, vocab: int, eos: int):
    """(examples, Rollouts) of a scenario, the same on every call and in every process."""
    import torch

    from superrl.data.prompts import Example
    from superrl.trainer.experience import Rollouts

    lengths, ids = random.Random(f"{name}-{prompts}-{n}"), random.Random(0)  # lengths whatever the vocab

    def tokens(low, high):
        return [ids.randrange(16, vocab) for _ in range(lengths.randint(low, high))]

    examples = [Example(row_id=p, data_source="bench", ground_truth="0", prompt_text="",
                        prompt_ids=tokens(90, 120), expert_ids=tokens(85, 115) + [eos], origin="bench")
                for p in range(prompts)]
    responses = [[tokens(max_tokens * 5 // 8, max_tokens) for _ in range(n)] for _ in range(prompts)]
    rewards = torch.zeros(prompts, n, dtype=torch.float64)
    if name == "mixed":
        rewards[:prompts // 2, ::2] = 1.0
    elif name != "sft":
        raise ValueError(f"unknown scenario {name!r}")
    rollouts = Rollouts(responses, [["length"] * n for _ in range(prompts)],
                        [[[0.0] * len(r) for r in group] for group in responses], rewards, {})
    return examples, rollouts


def expected_gates(name: str, prompts: int) -> list:
    """True = PG: the prompts whose rewards vary."""
    return [name == "mixed" and p < prompts // 2 for p in range(prompts)]


def useful_rows(examples, rollouts, gates) -> list:
    """(input tokens, target count) of every row with a nonzero loss weight (hard_gate)."""
    rows = []
    for example, responses, rewards, pg in zip(examples, rollouts.response_ids, rollouts.rewards, gates):
        if not pg:
            rows.append((example.prompt_ids + example.expert_ids, len(example.expert_ids)))
            continue
        rows += [(example.prompt_ids + r, len(r)) for r, reward in zip(responses, rewards.tolist())
                 if reward != float(rewards.mean())]
    return rows


# ----------------------------------------------------------------------------- FLOPs
def matmul_params(arch) -> int:
    h, kv = arch.hidden_size, arch.num_kv_heads * arch.head_dim
    per_layer = h * (arch.num_heads * arch.head_dim + 2 * kv) + arch.num_heads * arch.head_dim * h \
        + 3 * h * arch.ffn_hidden_size
    return arch.num_layers * per_layer + arch.vocab_size * h


def train_flops(arch, rows: list) -> float:
    """Forward + backward of every row (positions = input tokens less the last)."""
    n, d = matmul_params(arch), arch.num_heads * arch.head_dim
    return float(sum(6 * n * (len(ids) - 1) + 6 * arch.num_layers * d * (len(ids) - 1) ** 2 for ids, _ in rows))


# ----------------------------------------------------------------------------- GEMM peak
def _best_seconds(functions: dict, rounds: int) -> dict:
    """Min over rounds, the variants interleaved so load swings on a shared box hit all alike."""
    for f in functions.values():
        f()
    best = {key: float("inf") for key in functions}
    for r in range(rounds):
        for key in list(functions)[r % len(functions):] + list(functions)[:r % len(functions)]:
            start = time.perf_counter()
            functions[key]()
            best[key] = min(best[key], time.perf_counter() - start)
    return best


def measure_gemms(arch, rows: int, rounds: int) -> list:
    """fp32 GFLOP/s of a 2048^3 matmul and of the model's GEMMs at `rows` tokens (TP1 shapes), MKL
    (torch.matmul) and oneDNN (superrl.ops.onednn), forward, input gradient and weight gradient."""
    import torch

    from superrl.ops.onednn import onednn_linear, onednn_linear_works

    h, q, kv = arch.hidden_size, arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    shapes = {"square 2048": (2048, 2048, 2048), "qkv": (rows, h, q + 2 * kv), "o_proj": (rows, q, h),
              "gate_up": (rows, h, 2 * arch.ffn_hidden_size), "down": (rows, arch.ffn_hidden_size, h),
              "lm_head chunk": (LOGPROB_CHUNK, h, arch.vocab_size)}
    onednn = onednn_linear_works(torch.float32)
    results = []
    for name, (m, k, n) in shapes.items():
        x, w, dy = torch.randn(m, k), torch.randn(n, k), torch.randn(m, n)
        functions = {("forward", "mkl"): lambda: torch.matmul(x, w.t()), ("dgrad", "mkl"): lambda: dy.matmul(w),
                     ("wgrad", "mkl"): lambda: dy.t().matmul(x)}
        if onednn:
            functions.update({("forward", "onednn"): lambda: onednn_linear(x, w),
                              ("dgrad", "onednn"): lambda: onednn_linear(dy, w.t()),
                              ("wgrad", "onednn"): lambda: onednn_linear(dy.t(), x.t())})
        for (gemm, backend), seconds in _best_seconds(functions, rounds).items():
            results.append({"shape": name, "m": m, "k": k, "n": n, "gemm": gemm, "backend": backend,
                            "ms": seconds * 1e3, "gflops": 2 * m * k * n / seconds / 1e9})
    return results


# ----------------------------------------------------------------------------- baseline
def hf_baseline(hf_dir: str, name: str, prompts: int, n: int, max_tokens: int, micro_batch: int, repeats: int) -> dict:
    """A plain transformers + AdamW step on the scenario's useful rows: seconds per step."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    vocab = min(model.config.vocab_size, len(tokenizer))
    examples, rollouts = scenario(name, prompts, n, max_tokens, vocab, tokenizer.eos_token_id)
    rows = sorted(useful_rows(examples, rollouts, expected_gates(name, prompts)), key=lambda r: len(r[0]))
    targets = sum(t for _, t in rows)
    batches = [_padded_batch(rows[i:i + micro_batch], tokenizer.pad_token_id or 0)
               for i in range(0, len(rows), micro_batch)]

    def step():
        for ids, mask, labels in batches:
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                                     ignore_index=-100, reduction="sum") / targets
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return {"seconds": seconds[1:], "warmup_s": seconds[0], "threads": torch.get_num_threads()}


def _padded_batch(rows: list, pad_id: int):
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for i, (tokens, target_count) in enumerate(rows):
        ids[i, :len(tokens)] = torch.tensor(tokens)
        mask[i, :len(tokens)] = 1
        labels[i, len(tokens) - target_count:len(tokens)] = torch.tensor(tokens[-target_count:])
    return ids, mask, labels


# ----------------------------------------------------------------------------- driver
def _env() -> dict:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}


def run_superrl(tp: int, config: str, overrides: list, args) -> list:
    """One torchrun world (OMP_NUM_THREADS: cores / tp); one result per rank."""
    env = {**_env(), "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // tp))}
    with tempfile.TemporaryDirectory() as result_dir:
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={tp}",
                        str(WORKER), "--result-dir", result_dir, "--config", config, "--scenarios", *args.scenarios,
                        "--prompts", str(args.prompts), "--repeats", str(args.repeats), *overrides],
                       env=env, cwd=REPO_ROOT, check=True)
        return [json.loads(Path(result_dir, f"rank{rank}.json").read_text()) for rank in range(tp)]


def run_baseline(hf_dir: str, name: str, args, max_tokens: int, micro_batch: int) -> dict:
    """hf_baseline in a fresh process (its allocator and threads its own)."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import train_step; "
            f"print(json.dumps(train_step.hf_baseline({hf_dir!r}, {name!r}, {args.prompts}, {args.n}, "
            f"{max_tokens}, {micro_batch}, {args.repeats})))")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=REPO_ROOT, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def random_init(tmp: str, layers: int, heads: tuple) -> str:
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import make_tiny_model

    out = os.path.join(tmp, f"random_{heads[0]}_heads")
    if not os.path.exists(out):
        make_tiny_model.main([*SMOLLM2_SHAPE, "--heads", heads[0], "--kv-heads", heads[1], "--layers", str(layers),
                              "--out-dir", out])
    return out


def resolve_model(args, tmp: str) -> tuple:
    """(hf_dir, description): --hf-dir, the converted SmolLM2 when present, else random init."""
    if args.hf_dir:
        return args.hf_dir, "given"
    if REAL_MODEL.joinpath("config.json").exists() and not args.random_init:
        return str(REAL_MODEL), "SmolLM2-135M-Instruct"
    return random_init(tmp, args.layers, SMOLLM2_HEADS), f"random init, SmolLM2-135M shape, {args.layers} layers"


def model_for_tp(tp: int, hf_dir: str, description: str, arch, args, tmp: str) -> tuple:
    """The model itself when `tp` splits its heads, else (SmolLM2 shape) random init with TP_SPLITTABLE_HEADS."""
    if arch.num_heads % tp == 0 and arch.num_kv_heads % tp == 0:
        return hf_dir, description
    return (random_init(tmp, arch.num_layers, TP_SPLITTABLE_HEADS),
            f"random init, {TP_SPLITTABLE_HEADS[0]} x 48 heads / {TP_SPLITTABLE_HEADS[1]} KV heads "
            f"(same GEMMs as SmolLM2-135M, which TP{tp} cannot split), {arch.num_layers} layers")


def summarise(arch, args, results: dict, models: dict, baselines: dict, peak: float, config) -> list:
    rows = []
    for tp, per_rank in results.items():
        for name in args.scenarios:
            runs = [r["scenarios"][name] for r in per_rank]
            seconds = min(max(times) for times in zip(*(run["seconds"] for run in runs)))  # slowest rank, best call
            examples, rollouts = scenario(name, args.prompts, args.n, config.rollout.max_tokens, vocab=17, eos=0)
            gates = runs[0]["gates"]
            work = useful_rows(examples, rollouts, gates)
            flops, tokens = train_flops(arch, work), sum(t for _, t in work)
            baseline = baselines[name]["seconds"]
            rows.append({
                "scenario": name, "tp": tp, "model": models[tp][1], "train_s": seconds,
                "all_train_s": [run["seconds"] for run in runs],
                "gates_as_expected": gates == expected_gates(name, args.prompts) and runs[0]["same_gates_every_call"],
                "useful_rows": len(work), "useful_tokens": tokens, "useful_positions": sum(len(i) - 1 for i, _ in work),
                "useful_tflop": flops / 1e12, "useful_tokens_per_s": tokens / seconds,
                "useful_gflops": flops / seconds / 1e9, "vs_gemm_peak": flops / seconds / 1e9 / peak,
                "hf_adamw_s": min(baseline), "all_hf_adamw_s": baseline,
                "hf_adamw_useful_gflops": flops / min(baseline) / 1e9,
                "superrl_vs_hf_time": seconds / min(baseline), "metrics": runs[0]["metrics"],
            })
    return rows


def print_report(gemms: list, peak: float, rows: list) -> None:
    print(f"{'GEMM (fp32, all cores)':<16}{'m x k x n':>18}" + "".join(
        f"{g + ' ' + b:>16}" for g in ("forward", "dgrad", "wgrad") for b in ("mkl", "onednn")))
    for shape in dict.fromkeys(g["shape"] for g in gemms):
        cells = {(g["gemm"], g["backend"]): g for g in gemms if g["shape"] == shape}
        first = next(iter(cells.values()))
        line = f"{shape:<16}{first['m']:>6} x{first['k']:>5} x{first['n']:>6}"
        for key in [(g, b) for g in ("forward", "dgrad", "wgrad") for b in ("mkl", "onednn")]:
            line += f"{cells[key]['gflops']:>10.0f} GF/s" if key in cells else f"{'-':>16}"
        print(line)
    print(f"GEMM peak (best of the above): {peak:.0f} GFLOP/s\n")
    print(f"{'scenario':<8}{'tp':>3}{'train s':>9}{'rows':>6}{'tokens':>8}{'TFLOP':>7}{'tok/s':>8}{'GFLOP/s':>9}"
          f"{'vs peak':>9}{'HF+AdamW s':>12}{'HF GFLOP/s':>11}{'SuperRL/HF time':>17}")
    for r in rows:
        print(f"{r['scenario']:<8}{r['tp']:>3}{r['train_s']:>9.2f}{r['useful_rows']:>6}{r['useful_tokens']:>8}"
              f"{r['useful_tflop']:>7.2f}{r['useful_tokens_per_s']:>8.0f}{r['useful_gflops']:>9.1f}"
              f"{r['vs_gemm_peak']:>9.2f}{r['hf_adamw_s']:>12.2f}{r['hf_adamw_useful_gflops']:>11.1f}"
              f"{r['superrl_vs_hf_time']:>17.2f}" + ("" if r["gates_as_expected"] else "  (gates NOT as expected)"))
    for tp, model in dict.fromkeys((r["tp"], r["model"]) for r in rows):
        print(f"tp{tp}: {model}")
    print("useful = rows with a nonzero loss weight; tokens = their targets; targets: all-SFT SuperRL/HF <= 1, "
          "vs peak >= 0.6")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf-dir", help="an HF model folder (default: the converted SmolLM2, else random init)")
    p.add_argument("--random-init", action="store_true", help="a random-init model of SmolLM2-135M's shape")
    p.add_argument("--layers", type=int, default=SMOLLM2_LAYERS, help="layers of the random-init model")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--n", type=int, default=4, help="rollouts per prompt")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per scenario (after one warm-up)")
    p.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    p.add_argument("--scenarios", nargs="+", default=["sft", "mixed"], choices=["sft", "mixed"])
    p.add_argument("--gemm-rounds", type=int, default=6)
    p.add_argument("--set", nargs="*", default=[], help="more config overrides, key=value (e.g. model.cpu_gemm=torch)")
    p.add_argument("--out", default=str(REPO_ROOT / "bench/results/train_step.json"))
    args = p.parse_args()

    import torch

    from superrl.config import load_config
    from superrl.hf_config import load_arch

    load_average = [os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir, weights = resolve_model(args, tmp)
        arch = load_arch(hf_dir)
        gemms = measure_gemms(arch, GEMM_ROWS, args.gemm_rounds)
        peak = max(g["gflops"] for g in gemms)
        base = ["model.megatron_dir=null", f"rollout.n={args.n}", f"trainer.prompts_per_step={args.prompts}",
                f"trainer.run_dir={os.path.join(tmp, 'run')}", "data.eval_files=[]",
                "data.train_files=[reasoning_gym:gsm_symbolic?size=8&seed=1]", "rollout.parity_tolerance=1e30",
                *args.set]
        config = load_config(str(RECIPE), [f"model.hf_dir={hf_dir}", *base])
        models = {tp: model_for_tp(tp, hf_dir, weights, arch, args, tmp) for tp in args.tp}
        results = {tp: run_superrl(tp, str(RECIPE), [*base, f"model.hf_dir={models[tp][0]}", f"parallel.tp={tp}"], args)
                   for tp in args.tp}
        baselines = {name: run_baseline(hf_dir, name, args, config.rollout.max_tokens, config.optim.micro_batch_size)
                     for name in args.scenarios}
    load_average.append(os.getloadavg())
    rows = summarise(arch, args, results, models, baselines, peak, config)
    print_report(gemms, peak, rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "weights": weights, "layers": arch.num_layers, "matmul_params": matmul_params(arch),
        "prompts": args.prompts, "n": args.n, "repeats": args.repeats, "overrides": args.set,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average": load_average,
        "gemm_peak_gflops": peak, "gemms": gemms, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
