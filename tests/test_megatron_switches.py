"""megatron-core's memory and overlap switches as config keys: sequence parallelism
(`parallel.sequence_parallel`), activation recomputation (`model.recompute`) and the DP gradient
reduction overlapped with the backward (`optim.overlap_grad_reduce`) change how a step runs, not
what it computes: float32 losses equal the runs with them off within 1e-5."""
import pytest

from dist_harness import run_torchrun
from trainer_runs import train, write_config
from superrl.trainer.metrics import read_metrics

TOL = 1e-5
STEPS = 5
SP_AND_RECOMPUTE = ["parallel.sequence_parallel=true", "model.recompute=full"]


def sft_run(hf_dir: str, nproc: int, layout: list, switches: list) -> dict:
    return run_torchrun("sft_steps.py", nproc, ["--hf-dir", hf_dir, "--steps", STEPS, *layout, "--set", *switches])[0]


def assert_same_losses(got: list, want: list) -> None:
    assert len(got) == len(want) == STEPS
    for step, (a, b) in enumerate(zip(got, want)):
        assert abs(a - b) <= TOL, (step, a, b)


@pytest.fixture(scope="module")
def tp2_plain(tiny_llama):
    return sft_run(tiny_llama, 2, ["--tp", "2"], [])


@pytest.mark.parametrize("recompute", ["full", "selective"])
def test_sequence_parallel_and_recompute_at_tp2_match_them_off(tiny_llama, tp2_plain, recompute):
    run = sft_run(tiny_llama, 2, ["--tp", "2"], ["parallel.sequence_parallel=true", f"model.recompute={recompute}"])
    assert run["switches"]["sequence_parallel"] and run["switches"]["recompute_granularity"] == recompute
    assert not tp2_plain["switches"]["sequence_parallel"] and tp2_plain["switches"]["recompute_granularity"] is None
    assert_same_losses(run["losses"], tp2_plain["losses"])


def test_overlapped_grad_reduce_at_dp2_matches_it_off(tiny_llama):
    plain, overlapped = (sft_run(tiny_llama, 2, [], switches) for switches in ([], ["optim.overlap_grad_reduce=true"]))
    assert overlapped["switches"]["overlap_grad_reduce"] and not plain["switches"]["overlap_grad_reduce"]
    assert_same_losses(overlapped["losses"], plain["losses"])


def test_rl_steps_with_sequence_parallel_and_recompute_match_them_off(tmp_path, tiny_llama, arith_files):
    """The RL step's micro-batches have any width; sequence parallelism pads them to a multiple of
    TP for the model and cuts the outputs back, so every loss and statistic is unchanged."""
    runs = {}
    for name, switches in (("plain", []), ("switched", SP_AND_RECOMPUTE)):
        config = write_config(tmp_path / f"{name}.yaml", tiny_llama, arith_files, tmp_path / name)
        train(config, 2, "parallel.tp=2", *switches)
        runs[name] = read_metrics(str(tmp_path / name))
    assert [r["step"] for r in runs["switched"]] == [r["step"] for r in runs["plain"]] == [1, 2, 3]
    for got, want in zip(runs["switched"], runs["plain"]):
        for key, value in want.items():
            if key.startswith(("loss/", "actor/", "switch/", "reward/")):
                assert got[key] == pytest.approx(value, abs=TOL), (got["step"], key)
