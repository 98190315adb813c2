"""`algorithm.kl_coef > 0`: the frozen reference policy of the KL.

As a loss term (`algorithm.kl_in_reward=false`) it attaches log pi_ref of every token to the
micro-batches before each update, and hybrid_loss adds the KL term. In the reward (`true`) it takes
the per-token KL of the policy about to be updated (the rollout policy) to the reference before the
advantages, and subtracts kl_coef times each response's sum from its reward (algorithms/kl.py);
with algorithm.advantage=gae each token's reward pays kl_coef times its own KL instead
(trainer/critic.py). The loss then has no KL term. It is rebuilt from the initial weights on every start, so it has no
checkpoint state.
"""
import torch
from megatron.core import parallel_state as mpu

from superrl.algorithms.counts import all_reduce_sum, count_vector
from superrl.algorithms.kl import kl_penalized_rewards, kl_per_token
from superrl.config import Config
from superrl.hf_config import ModelArch
from superrl.trainer.batching import ROLLOUT
from superrl.trainer.feature import TrainerFeature
from superrl.trainer.model_setup import build_model, load_initial_weights, with_mixed_precision
from superrl.trainer.step import IGNORE, forward_outputs, from_last_stage


def build_reference_model(config: Config, arch: ModelArch):
    """Frozen copy of the initial policy in the policy's precision (forward only, no DDP, no optimizer)."""
    model = build_model(config, arch)
    load_initial_weights(model, config, arch, arch.padded_vocab_size(config.model.vocab_pad_multiple))
    model.requires_grad_(False)
    return with_mixed_precision(model)


class ReferenceKL(TrainerFeature):
    name = "reference_kl"

    @staticmethod
    def enabled(config: Config) -> bool:
        return config.algorithm.kl_coef > 0

    def __init__(self, config: Config, arch: ModelArch):
        self.model = build_reference_model(config, arch)
        self.algorithm = config.algorithm

    def shape_rewards(self, rewards, rows, model, pack) -> tuple:
        """kl_in_reward: R - kl_coef * sum_t KL_t per response. Metrics: `actor/kl`, the token mean
        of KL_t over every rollout token of the step, and `reward/kl_penalty_mean`, the mean penalty
        per response (DP-global sums)."""
        if not self.algorithm.kl_in_reward or self.algorithm.advantage == "gae":
            return rewards, {}  # gae puts the KL into each token's reward instead (trainer/critic.py)
        kl, mask = self.response_kl(model, rows.rows, pack)
        penalised, kl_per_seq = kl_penalized_rewards(rewards.flatten(), kl, mask, self.algorithm.kl_coef)
        return penalised.view_as(rewards), self.kl_metrics(kl_per_seq, mask)

    def kl_metrics(self, kl_per_seq: torch.Tensor, mask: torch.Tensor) -> dict:
        """`actor/kl` and `reward/kl_penalty_mean` (shape_rewards) of the step's KL sums per response
        and token mask (collective over DP)."""
        total, tokens, responses = all_reduce_sum(count_vector(kl_per_seq.sum(), mask.sum(), len(kl_per_seq)),
                                                  mpu.get_data_parallel_group()).tolist()
        return {"actor/kl": total / max(tokens, 1.0),
                "reward/kl_penalty_mean": self.algorithm.kl_coef * total / max(responses, 1.0)}

    def response_kl(self, model, rows: list, pack) -> tuple:
        """(KL_t [R, T], mask [R, T]), float64 on the host and on every rank: the per-token KL
        (algorithm.kl_estimator) of `model` (the policy, before its update: the rollout policy) to
        the reference, at each response token t of each rollout row in `rows`' order. Collective:
        the last pipeline stage computes it, the others receive it."""
        lengths = torch.tensor([len(row.response_ids) for row in rows])
        mask = torch.arange(max(int(lengths.max()), 1))[None, :] < lengths[:, None]
        kl = torch.zeros(mask.shape, dtype=torch.float64)
        micro_batches = pack(rows)
        outputs = zip(micro_batches, forward_outputs(model, micro_batches), forward_outputs(self.model, micro_batches))
        for mb, (logprobs, _), (ref_logprobs, _) in outputs:  # the last stage's only
            token_kl = kl_per_token(logprobs.cpu().double(), ref_logprobs.cpu().double(), self.algorithm.kl_estimator)
            for b in (mb.row_kind == ROLLOUT).nonzero().squeeze(1).tolist():
                values = token_kl[b, mb.targets[b] != IGNORE]
                kl[int(mb.row_index[b]), :len(values)] = values
        return from_last_stage(kl), mask

    def before_update(self, update) -> None:
        if self.algorithm.kl_in_reward:
            return  # the KL was taken before the advantages; the loss has no KL term
        for mb, (logprobs, _) in zip(update.micro_batches, forward_outputs(self.model, update.micro_batches)):
            mb.ref_logprobs = logprobs
