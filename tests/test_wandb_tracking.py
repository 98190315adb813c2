"""trainer.loggers=[jsonl, wandb] in a real training run with WANDB_MODE=offline: the offline run
files (read with tests/wandb_records.py, not the SDK) hold the project, the run name, the resolved
config and every step's metrics as metrics.jsonl has them; a resumed run continues the same run id."""
import pytest

from trainer_runs import train, write_config
from wandb_records import OfflineRun
from superrl.trainer.metrics import read_metrics
from superrl.trainer.sinks.wandb_run import RUN_ID_FILE

LOGGED = ("reward/mean", "reward/success_rate", "switch/sft_fraction", "loss/pg", "loss/sft", "timing/step_s")


@pytest.mark.usefixtures("no_leftover_processes")
def test_offline_wandb_run_holds_metrics_config_and_resumes_the_same_run(tmp_path, tiny_llama, arith_files,
                                                                         monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_dir = tmp_path / "gsm_try1"
    config = write_config(tmp_path / "c.yaml", tiny_llama, arith_files, run_dir, steps=2)
    train(config, 1, "trainer.loggers=[jsonl,wandb]")
    train(config, 1, "trainer.loggers=[jsonl,wandb]", "trainer.resume=true", "trainer.total_steps=3")

    first, resumed = [OfflineRun(d) for d in sorted((tmp_path / "wandb").glob("offline-run-*"))]  # by start time
    assert first.id == resumed.id == (run_dir / RUN_ID_FILE).read_text().strip()
    assert (first.project, first.name) == ("superrl", "gsm_try1")
    assert first.config["trainer"]["loggers"] == ["jsonl", "wandb"]
    assert first.config["optim"]["lr"] == 1.0e-3 and first.config["model"]["hf_dir"] == tiny_llama
    assert resumed.config["trainer"]["total_steps"] == 3

    rows = read_metrics(str(run_dir))
    history = first.history + resumed.history
    assert [h["_step"] for h in history] == [r["step"] for r in rows] == [1, 2, 3]
    for logged, row in zip(history, rows):
        assert {k: logged[k] for k in LOGGED} == {k: row[k] for k in LOGGED}, row["step"]
