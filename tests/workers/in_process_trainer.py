"""The real Trainer inside a worker script, started as `superrl.train` starts it (the first weight
sync, a preemption watch) and closed however the steps end, so a worker can add features or observe
its parts and then call `train_step()` itself."""
from contextlib import contextmanager

from superrl.trainer import loop
from superrl.trainer.preemption import PreemptionWatch


@contextmanager
def started_trainer(config, arch, ctx):
    trainer = loop.Trainer(config, arch, ctx)
    trainer.preemption = PreemptionWatch(config.trainer.preemption_grace_s)
    try:
        trainer.sync_engine()
        yield trainer
    finally:
        trainer.preemption.close()
        trainer.close()
