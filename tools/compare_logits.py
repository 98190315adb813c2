"""Check a megatron checkpoint against its Hugging Face model: same random tokens, same logits.

    python tools/compare_logits.py --hf-dir DIR --megatron-dir MDIR [--tp N --pp M] [--atol 1e-4]
                                   [--dtype float32|bfloat16]
    torchrun --nproc-per-node N*M tools/compare_logits.py --hf-dir DIR --megatron-dir MDIR

A plain run loads the checkpoint at TP1 x PP1, a torchrun world at the checkpoint's own TP x PP;
`--tp/--pp` pick another layout (resharded on load; a plain run then launches the ranks itself).
Prints `max_abs_diff=<float>` and exits 1 when it exceeds `--atol`. `--dtype bfloat16` runs both
models in bf16 (the megatron one as training runs it, in megatron's Float16Module); two bf16
implementations differ by bf16 rounding, not 1e-4: docs/mixed_precision.md gives the tolerance.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from megatron.core import parallel_state as mpu  # noqa: E402
from megatron.core.pipeline_parallel import get_forward_backward_func  # noqa: E402
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from convert_hf_to_megatron import check_layout, exit_on_user_error, in_torchrun, run_under_torchrun, world_size  # noqa: E402,E501
from superrl.algorithms.counts import comm_device  # noqa: E402
from superrl.distributed import destroy_distributed, init_distributed  # noqa: E402
from superrl.hf_config import ModelArch, load_arch  # noqa: E402
from superrl.models.gpt import build_policy_model  # noqa: E402
from superrl.trainer.model_setup import with_mixed_precision  # noqa: E402
from superrl.trainer.step import model_device  # noqa: E402
from superrl.weights.megatron_checkpoint import check_same_model, load_model_checkpoint, read_checkpoint_metadata  # noqa: E402,E501


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf-dir", required=True)
    p.add_argument("--megatron-dir", required=True)
    p.add_argument("--tp", type=int, default=None, help="default: the checkpoint's under torchrun, else 1")
    p.add_argument("--pp", type=int, default=None, help="default: the checkpoint's under torchrun, else 1")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="precision both models run in (default float32)")
    return p.parse_args(argv)


def random_tokens(vocab_size: int, batch_size: int, seq_len: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch_size, seq_len), generator=torch.Generator().manual_seed(seed))


def last_stage_logits(model, tokens: torch.Tensor):
    """Full padded-vocab logits [b, s, V] on the last PP stage (every TP rank), None elsewhere."""
    b, s = tokens.shape
    tokens = tokens.to(model_device(model))
    position_ids = torch.arange(s, device=tokens.device).expand(b, s)

    def forward_step(data_iterator, model_chunk):
        return model_chunk(tokens, position_ids, None), None  # no loss: the schedule returns outputs

    with torch.no_grad():
        outputs = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=None, model=[model], num_microbatches=1,
            seq_length=s, micro_batch_size=b, forward_only=True)
    if not mpu.is_pipeline_last_stage():
        return None
    return gather_from_tensor_model_parallel_region(outputs[0])


def checkpoint_logits(megatron_dir: str, arch: ModelArch, padded_vocab: int, tokens: torch.Tensor,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Collective over the current megatron TP x PP layout: load the checkpoint (resharding if it was
    saved at another layout) into a model in `dtype` and return its fp32 logits [b, s, vocab_size]
    on every rank."""
    tp, pp = mpu.get_tensor_model_parallel_world_size(), mpu.get_pipeline_model_parallel_world_size()
    model = build_policy_model(arch, tp, pp, padded_vocab, dtype=dtype)
    load_model_checkpoint(model, megatron_dir, arch)
    return shared_logits(with_mixed_precision(model).eval(), arch, tokens)


def shared_logits(model, arch: ModelArch, tokens: torch.Tensor) -> torch.Tensor:
    """Collective: the model's logits [b, s, vocab_size], on the host of every rank."""
    logits = last_stage_logits(model, tokens)
    shared = torch.zeros(*tokens.shape, arch.vocab_size, device=comm_device(dist.group.WORLD))
    if logits is not None and mpu.get_tensor_model_parallel_rank() == 0 and mpu.get_data_parallel_rank() == 0:
        shared.copy_(logits[..., :arch.vocab_size])  # cut the vocab padding
    dist.all_reduce(shared)  # exactly one rank contributed: everyone now holds the logits
    return shared.cpu()  # beside the HF model's


def hf_logits(hf_dir: str, tokens: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype)
    with torch.no_grad():
        return model(tokens).logits.float()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    metadata = read_checkpoint_metadata(args.megatron_dir)
    arch = load_arch(args.hf_dir)
    check_same_model(metadata, arch, metadata["padded_vocab"], args.megatron_dir)
    default_tp, default_pp = (metadata["tp"], metadata["pp"]) if in_torchrun() else (1, 1)
    tp, pp = args.tp or default_tp, args.pp or default_pp
    padded_vocab = check_layout(arch, tp, pp, world_size() if in_torchrun() else tp * pp)
    if tp * pp > 1 and not in_torchrun():
        return run_under_torchrun(tp * pp, __file__, [*argv, "--tp", str(tp), "--pp", str(pp)])

    ctx = init_distributed(tp, pp, seed=args.seed)
    tokens = random_tokens(arch.vocab_size, args.batch_size, args.seq_len, args.seed)
    dtype = getattr(torch, args.dtype)
    logits = checkpoint_logits(args.megatron_dir, arch, padded_vocab, tokens, dtype)
    diff = torch.zeros((), dtype=torch.float64, device=comm_device(dist.group.WORLD))
    if ctx.rank == 0:  # one rank runs the HF model
        diff.fill_((logits - hf_logits(args.hf_dir, tokens, dtype)).abs().max().item())
        print(f"max_abs_diff={diff.item():.3e}  (TP{tp} x PP{pp}, {args.dtype}, atol {args.atol:g})")
    dist.broadcast(diff, src=0)  # every rank exits with the same code
    destroy_distributed()
    return 0 if diff.item() <= args.atol else 1


if __name__ == "__main__":
    exit_on_user_error(main)
