"""Weight sync into the embedded engine on GPU: after SFT steps and a sync, the engine's log-probs
of its own greedy generations equal the trainer's (tests/workers/sync_logprobs.py, as on CPU).

SYNCED_TOL = 1e-4: both sides run float32 on the GPU with different kernels (the engine's own
attention and GEMMs, megatron's layers); their sums differ in order only (~1e-6 here). The stale
engine, before the sync, is off by more than 1e-2, so the check is not vacuous.
"""
import pytest

from gpu_harness import needs_gpus, run_worker_on_gpus

SYNCED_TOL = 1e-4
STALE_MIN = 1e-2


@pytest.mark.parametrize("nproc,tp", [pytest.param(1, 1, id="1gpu"),
                                      pytest.param(2, 2, id="2gpu-tp2", marks=needs_gpus(2))])
def test_engine_logprobs_equal_trainer_after_sync_on_gpu(tiny_llama, nproc, tp):
    results = run_worker_on_gpus("sync_logprobs.py", nproc, ["--layout", f"{tiny_llama}:{tp}:1", "--steps", 2])
    for rank in results:
        (layout,) = rank
        assert layout["layout"] == f"tp{tp}pp1" and layout["is_last_stage"]
        for transport in ("collective", "shared_memory", "direct"):
            got = layout[transport]
            assert got["stale_diff"] > STALE_MIN, (transport, "the engine should hold older weights")
            assert got["synced_diff"] <= SYNCED_TOL, (transport, got["synced_diff"])
