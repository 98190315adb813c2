"""vLLM inside the trainer's torchrun world (external launcher): engine TP equals TP1, and a
3-step trainer run at TP2 with vLLM (engine TP2, or two TP1 engine replicas) exits cleanly and
logs the metrics of the same run with the embedded engine. Greedy sampling, where both engines
pick the same tokens: a seeded sample differs between engines (their samplers differ)."""
import pytest

pytest.importorskip("vllm")  # the vLLM stage's venv; the main suite skips this module

from dist_harness import run_torchrun  # noqa: E402
from trainer_runs import STEPS, train, write_config  # noqa: E402
from superrl.trainer.metrics import read_metrics  # noqa: E402

COMPARED = ("reward/", "switch/", "loss/")
RUN_TIMEOUT_S = 400  # two engine start-ups (~30 s each on 2 cores) and 3 steps; a hang fails here


def test_engine_tp2_matches_tp1_greedy(tiny_model_dirs):
    [tp1] = run_torchrun("vllm_greedy.py", 1, ["--model-dir", tiny_model_dirs["qwen2"], "--tensor-parallel-size", 1],
                         timeout=RUN_TIMEOUT_S)
    tp2 = run_torchrun("vllm_greedy.py", 2, ["--model-dir", tiny_model_dirs["qwen2"], "--tensor-parallel-size", 2],
                       timeout=RUN_TIMEOUT_S)
    for rank in tp2:
        assert rank["tokens"] == tp1["tokens"]
        for got, want in zip(rank["logprobs"], tp1["logprobs"]):
            assert got == pytest.approx(want, abs=1e-5)


@pytest.fixture(scope="module")
def greedy_config(tmp_path_factory, tiny_model_dirs, arith_files):
    d = tmp_path_factory.mktemp("vllm_trainer")

    def config(name: str) -> tuple:
        run_dir = d / name
        return write_config(d / f"{name}.yaml", tiny_model_dirs["qwen2"], arith_files, run_dir), run_dir
    return config


@pytest.fixture(scope="module")
def embedded_tp2_run(greedy_config):
    config, run_dir = greedy_config("embedded")
    train(config, 2, "parallel.tp=2", "rollout.temperature=0.0")
    return read_metrics(str(run_dir))


@pytest.mark.parametrize("engine_tp", [2, 1], ids=["engine_tp2", "two_engine_replicas_tp1"])
def test_trainer_tp2_with_vllm_matches_embedded(greedy_config, embedded_tp2_run, engine_tp, no_leftover_processes):
    config, run_dir = greedy_config(f"vllm_tp{engine_tp}")
    train(config, 2, "parallel.tp=2", "rollout.temperature=0.0", "rollout.engine=vllm",
          f"rollout.tensor_parallel_size={engine_tp}", "trainer.dist_timeout_s=120", timeout=RUN_TIMEOUT_S)
    rows = read_metrics(str(run_dir))
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)) == [r["step"] for r in embedded_tp2_run]
    for got, want in zip(rows, embedded_tp2_run):
        compared = {k: v for k, v in want.items() if k.startswith(COMPARED)}
        assert compared, "no reward/switch/loss metrics logged"
        for key, value in compared.items():
            assert got[key] == pytest.approx(value, abs=1e-4), (got["step"], key)
