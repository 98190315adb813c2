"""trainer.loggers: the names the config accepts are the sinks that exist, each sink writes only
its own files, read back with the format's own reader (json, TensorBoard's EventAccumulator), and
a missing optional package is named at start-up."""
import json
import math
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from superrl.config import LOGGERS, ConfigError, load_config
from superrl.trainer.metrics import MetricsLogger, read_metrics
from superrl.trainer.progress import postfix
from superrl.trainer.sinks import SINKS, require_sink_packages
from superrl.trainer.sinks.wandb_run import RUN_ID_FILE, resumed_run_id

ROWS = {1: {"reward/mean": 0.25, "loss/pg": math.nan}, 2: {"reward/mean": 0.5, "loss/pg": -0.125}}


def _config(tmp_path, *loggers):
    return load_config(None, [f"trainer.run_dir={tmp_path / 'run'}", "trainer.total_steps=2",
                              f"trainer.loggers=[{','.join(loggers)}]"])


def _log_rows(config, start_step=0, rows=ROWS):
    logger = MetricsLogger(config, start_step=start_step)
    for step, metrics in rows.items():
        logger.log(step, metrics)
    logger.log_event("probe", {"sparse": True})
    logger.close()


def test_config_accepts_exactly_the_sinks_that_exist():
    assert set(SINKS) == set(LOGGERS)
    assert load_config(None, []).trainer.loggers == ["jsonl", "tensorboard"]


def test_unknown_logger_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"trainer.loggers: 'mlflow' is not one of jsonl, tensorboard, wandb"):
        load_config(None, ["trainer.loggers=[jsonl,mlflow]"])


def test_jsonl_alone_writes_strict_json_rows_and_events_and_no_tensorboard(tmp_path):
    _log_rows(_config(tmp_path, "jsonl"))
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "loss/pg": None, "reward/mean": 0.25},
                     {"step": 2, "loss/pg": -0.125, "reward/mean": 0.5}, {"event": "probe", "sparse": True}]
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_tensorboard_alone_writes_finite_scalars_and_no_jsonl(tmp_path):
    _log_rows(_config(tmp_path, "tensorboard"))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("reward/mean")] == [(1, 0.25), (2, 0.5)]
    assert [(e.step, e.value) for e in events.Scalars("loss/pg")] == [(2, -0.125)]  # NaN left out
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_resume_drops_the_rows_logged_after_the_checkpoint(tmp_path):
    config = _config(tmp_path, "jsonl")
    _log_rows(config)
    _log_rows(config, start_step=1, rows={2: {"reward/mean": 0.75}})
    assert [(r["step"], r["reward/mean"]) for r in read_metrics(config.trainer.run_dir)] == [(1, 0.25), (2, 0.75)]


def test_wandb_missing_is_named_with_its_extra_at_start_up(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # how Python marks a module as not importable
    require_sink_packages(["jsonl", "tensorboard"])
    with pytest.raises(ConfigError, match=r"wandb is not installed: install the 'tracking' extra"):
        require_sink_packages(["jsonl", "wandb"])


def test_wandb_run_id_is_kept_only_for_a_resumed_run(tmp_path):
    (tmp_path / RUN_ID_FILE).write_text("abc123\n")
    assert resumed_run_id(str(tmp_path), start_step=4) == "abc123"
    assert resumed_run_id(str(tmp_path), start_step=0) is None  # a fresh run in an old run dir
    assert resumed_run_id(str(tmp_path / "elsewhere"), start_step=4) is None


def test_progress_postfix_shows_reward_success_sft_and_step_time():
    row = {"reward/mean": 0.0625, "reward/success_rate": 0.125, "switch/sft_fraction": 0.75, "timing/step_s": 1.5}
    assert postfix(row) == "reward=0.062, success=0.12, sft=0.75, s/step=1.50"
    assert postfix({}) == "reward=-, success=-, sft=-, s/step=-"
