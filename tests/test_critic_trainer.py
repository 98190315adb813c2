"""PPO with a critic through `torchrun -m superrl.train` (algorithm.advantage=gae, with the Adaptive
Switch and the Hybrid Actor of trainer_runs' config, the KL in the reward per token and one critic
warm-up step): TP2 and DP2 reproduce the TP1 run, and a run killed with SIGKILL after a checkpoint
resumes, critic included, to bitwise the same metrics."""
import pytest

from trainer_runs import STEPS, deterministic_metrics, kill_run, start_training, train, wait_until, write_config
from superrl.trainer.checkpoint import CRITIC_DIR
from superrl.trainer.metrics import read_metrics
from superrl.weights.megatron_checkpoint import METADATA_FILE

PPO = ("algorithm.advantage=gae", "algorithm.gamma=0.95", "algorithm.lam=0.9", "critic.warmup_steps=1",
       "critic.optim.lr=1e-4", "critic.cliprange_value=0.2", "algorithm.kl_coef=0.05", "algorithm.kl_in_reward=true")
COMPARED = ("loss/", "reward/", "switch/", "actor/", "critic/")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_llama, arith_files):
    d = tmp_path_factory.mktemp("ppo_tp1")
    config = write_config(d / "c.yaml", tiny_llama, arith_files, d / "run", steps=4, save_every=2)
    train(config, 1, *PPO)
    return config, read_metrics(str(d / "run")), d / "run"


def test_reference_run_trains_the_critic_then_the_actor(reference_run):
    _, rows, run_dir = reference_run
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("critic/value_loss", "critic/vf_clipfrac", "critic/values_mean", "critic/returns_mean",
                "critic/advantages_mean", "critic/grad_norm", "critic/lr"):
        assert all(key in r for r in rows), key
    assert rows[0]["loss/pg"] == 0.0 and rows[0]["loss/sft"] == 0.0  # warm-up: the critic alone
    assert rows[0]["critic/values_mean"] == 0.0  # the zero-initialised head
    assert any(r["loss/pg"] != 0.0 for r in rows[1:])
    assert rows[-1]["critic/values_mean"] != 0.0
    for step in (2, 4):
        assert (run_dir / "checkpoints" / f"step_{step}" / CRITIC_DIR / METADATA_FILE).exists()


@pytest.mark.parametrize("nproc,layout", [(2, ["parallel.tp=2"]), (2, [])], ids=["tp2", "dp2"])
def test_parallel_layout_reproduces_tp1(tmp_path, tiny_llama, arith_files, reference_run, nproc, layout):
    config = write_config(tmp_path / "c.yaml", tiny_llama, arith_files, tmp_path / "run")
    train(config, nproc, *PPO, *layout)
    rows, want_rows = read_metrics(str(tmp_path / "run")), reference_run[1][:STEPS]
    assert [r["step"] for r in rows] == [r["step"] for r in want_rows]
    for got, want in zip(rows, want_rows):
        for key, value in want.items():
            if key.startswith(COMPARED):
                assert got[key] == pytest.approx(value, abs=1e-4), (got["step"], key)


@pytest.mark.usefixtures("no_leftover_processes")
def test_kill_9_after_checkpoint_then_resume_is_bitwise(tmp_path, tiny_llama, arith_files, reference_run):
    config = write_config(tmp_path / "c.yaml", tiny_llama, arith_files, tmp_path / "run", steps=4, save_every=2)
    proc = start_training(tmp_path, config, *PPO)
    checkpoint = tmp_path / "run" / "checkpoints" / "step_2" / METADATA_FILE
    wait_until(checkpoint.exists, proc, what="the step-2 checkpoint")
    kill_run(proc)
    train(config, 1, *PPO, "trainer.resume=true")
    resumed = read_metrics(str(tmp_path / "run"))
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for got, want in zip(resumed, reference_run[1]):
        assert deterministic_metrics(got) == deterministic_metrics(want), got["step"]
