"""The tqdm bar on the logging rank: steps done, time left, and per step the reward, the success
rate, the fraction of prompts routed to SFT and the seconds the step took."""
from tqdm import tqdm

# (label, metrics key, format); "-" for a metric the step row lacks
POSTFIX = (("reward", "reward/mean", ".3f"), ("success", "reward/success_rate", ".2f"),
           ("sft", "switch/sft_fraction", ".2f"), ("s/step", "timing/step_s", ".2f"))
# tqdm's own rate left out: s/step is the step's own time, without eval and checkpoint saves
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


class ProgressBar:
    def __init__(self, total_steps: int, start_step: int):
        self.bar = tqdm(total=total_steps, initial=start_step, desc="superrl", dynamic_ncols=True,
                        bar_format=BAR_FORMAT)

    def update(self, row: dict) -> None:
        self.bar.set_postfix_str(postfix(row), refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def postfix(row: dict) -> str:
    return ", ".join(f"{label}={_format(row.get(key), spec)}" for label, key, spec in POSTFIX)


def _format(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)
