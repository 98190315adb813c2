"""Conversion throughput: HF -> megatron and megatron -> HF (TP1 x PP1) vs a plain safetensors
load + save of the same weights, each as the command a user runs, side by side in one run.

    python bench/convert.py [--hidden 1024 --layers 6 --vocab 32000] [--out bench/results/convert.json]

MB/s = weight bytes / wall time of the command. Commands pay interpreter and import start-up
(megatron + transformers), measured separately as `startup_s` (the converter's `--help`) and
subtracted in the `*_excl_startup` columns.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
PLAIN_COPY = ("import sys; from safetensors.torch import load_file, save_file; "
              "save_file(load_file(sys.argv[1]), sys.argv[2], metadata={'format': 'pt'})")


def timed(cmd: list) -> float:
    start = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def weight_bytes(hf_dir: Path) -> int:
    return sum(f.stat().st_size for f in hf_dir.glob("*.safetensors"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "convert.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf_dir, mdir, back = tmp / "hf", tmp / "megatron", tmp / "hf_back"
        timed([sys.executable, TOOLS / "make_tiny_model.py", "--arch", "llama", "--out-dir", hf_dir,
               "--hidden", args.hidden, "--layers", args.layers, "--heads", args.heads,
               "--kv-heads", args.kv_heads, "--vocab", args.vocab])
        mb = weight_bytes(hf_dir) / 2**20
        seconds = {
            "startup": timed([sys.executable, TOOLS / "convert_hf_to_megatron.py", "--help"]),
            "plain_load_save": timed([sys.executable, "-c", PLAIN_COPY, hf_dir / "model.safetensors",
                                      tmp / "plain.safetensors"]),
            "hf_to_megatron": timed([sys.executable, TOOLS / "convert_hf_to_megatron.py", "--hf-dir", hf_dir,
                                     "--out-dir", mdir, "--tp", 1, "--pp", 1]),
            "megatron_to_hf": timed([sys.executable, TOOLS / "convert_megatron_to_hf.py", "--megatron-dir", mdir,
                                     "--out-dir", back]),
        }
    startup = seconds.pop("startup")
    rows = {name: {"seconds": s, "mb_per_s": mb / s,
                   "mb_per_s_excl_startup": mb / max(s - startup, 1e-9) if name != "plain_load_save" else None}
            for name, s in seconds.items()}
    plain = rows["plain_load_save"]["mb_per_s"]
    for name in ("hf_to_megatron", "megatron_to_hf"):
        rows[name]["ratio_vs_plain"] = rows[name]["mb_per_s"] / plain
    result = {"model": {"arch": "llama", "hidden": args.hidden, "layers": args.layers, "vocab": args.vocab,
                        "weight_mb": mb}, "startup_s": startup, "results": rows}
    print(f"weights: {mb:.0f} MB; tool start-up (imports): {startup:.1f} s")
    print(f"{'command':<18}{'seconds':>9}{'MB/s':>9}{'MB/s excl start-up':>20}{'vs plain':>10}")
    for name, r in rows.items():
        excl = f"{r['mb_per_s_excl_startup']:.1f}" if r["mb_per_s_excl_startup"] else "-"
        ratio = f"{r['ratio_vs_plain']:.2f}x" if "ratio_vs_plain" in r else "1.00x"
        print(f"{name:<18}{r['seconds']:>9.1f}{r['mb_per_s']:>9.1f}{excl:>20}{ratio:>10}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
