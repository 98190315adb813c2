"""The Adaptive Switch: the ONE place that decides which prompts get the SFT loss on y*.

Per step, every rank calls `AdaptiveSwitch.decide(rewards, ...)` with its local reward matrix
`[P_local, K]` and the DP group. Every statistic the decision needs is an all-reduced SUM of counts
over the group, so all ranks hold identical switch state and identical global numbers.

Output per prompt: gate c(x) (True = policy gradient, False = SFT on the expert trajectory y*).

Modes (`algorithm.switch.mode`):
  off         pure RL: c(x) = 1 for every prompt.
  always_sft  hybrid regime always on.
  probe       SuperRL v1: `probe(rewards)` once before training over `probe_prompts` prompts; if
              the DP-global fraction of prompts with max_k R_k > eps is < probe_threshold, the run
              is sparse and the hybrid regime is on for the whole run. Fixed afterwards.
  per_prompt  SuperRL v2 hard gate: c(x) = 1[max_k R_k > eps].
  adv_gate    c(x) = 1[max_k |A_k| > eps]: all-equal-reward groups (no learning signal) go to SFT.
  window      EMA of the DP-global response success rate (fraction of responses with R > eps)
              with hysteresis: the regime turns on when ema < tau_on and off when ema > tau_off
              (tau_on < tau_off; in between it keeps its state). With `per_source`, one EMA and
              one state per `data_source`. Every transition is recorded.

While a regime mode (always_sft, probe, window) is on, `route=all` sends every prompt to SFT and
`route=failed` only prompts with max_k R_k <= eps.

Prompts without an expert trajectory (empty `expert_response`, has_expert=False) cannot use SFT:
their gate stays PG, and they are counted in `switch/no_expert_prompts`. `sft_fraction` counts the
prompts actually routed to SFT.
"""
import copy
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from superrl.algorithms.config import SwitchConfig
from superrl.algorithms.counts import ProcessGroup, all_reduce_sum, count_vector

REGIME_MODES = ("always_sft", "probe", "window")
_ALL = "__all__"  # window bucket of the whole batch (the only one unless per_source)
DEFAULT_SOURCE = "default"


@dataclass
class SwitchDecision:
    """One step's decision; identical on every DP rank except `gates` (local prompts)."""
    gates: torch.Tensor          # bool [P_local]: True = PG, False = SFT on y*
    hybrid_on: bool              # regime state (regime modes) / any prompt routed (others)
    num_prompts: int             # DP-global
    num_sft_prompts: int         # DP-global, prompts with gate False
    sft_fraction: float          # num_sft_prompts / num_prompts
    transitions: list = field(default_factory=list)  # window transitions made at this step
    stats: dict = field(default_factory=dict)        # `switch/*` metrics (floats)


def _hybrid_state(on: bool) -> str:
    return "hybrid" if on else "rl"


class AdaptiveSwitch:
    """Stateful switch; checkpoint it with `state_dict()` / `load_state_dict()`."""

    def __init__(self, cfg: SwitchConfig):
        cfg.validate()
        self.cfg = cfg
        self._probe: Optional[dict] = None   # {"success_fraction", "num_prompts", "hybrid_on"}
        self._window: dict = {}              # bucket -> {"ema": float, "on": bool}
        self.transitions: list = []          # all window transitions of the run

    # ---- probe (SuperRL v1) -------------------------------------------------------------------
    @property
    def needs_probe(self) -> bool:
        """Mode `probe` before its decision is made (by probe() or a restored state)."""
        return self.cfg.mode == "probe" and self._probe is None

    def probe(self, rewards: torch.Tensor, group: ProcessGroup = None) -> dict:
        """Decide once, from probe rollouts `[P_local, K]`, whether the whole run is sparse."""
        if self.cfg.mode != "probe":
            raise ValueError(f"probe() needs algorithm.switch.mode='probe', got {self.cfg.mode!r}")
        if self._probe is not None:
            raise RuntimeError("the probe decision is fixed for the run; probe() was already called")
        _check_rewards(rewards)
        solved = self._solved(rewards)
        local = count_vector(solved.numel(), solved.sum())
        num_prompts, num_solved = all_reduce_sum(local, group).tolist()
        if num_prompts == 0:
            raise ValueError("probe() got no prompts on any rank")
        fraction = num_solved / num_prompts
        self._probe = {"success_fraction": fraction, "num_prompts": int(num_prompts),
                       "hybrid_on": fraction < self.cfg.probe_threshold}
        return {"switch/probe_success_fraction": fraction, "switch/probe_prompts": num_prompts,
                "switch/hybrid_on": float(self._probe["hybrid_on"])}

    # ---- per-step decision --------------------------------------------------------------------
    def decide(self, rewards: torch.Tensor, *, step: int,
               has_expert: Optional[torch.Tensor] = None,
               advantages: Optional[torch.Tensor] = None,
               sources: Optional[Sequence[str]] = None,
               group: ProcessGroup = None) -> SwitchDecision:
        """Gate this rank's prompts.

        rewards    [P_local, K] scalar rewards of the K responses of each local prompt.
        step       optimizer step (recorded in window transitions).
        has_expert [P_local] bool: prompt has a non-empty expert trajectory (default: all True).
        advantages [P_local, K], required by `adv_gate`.
        sources    P_local `data_source` names (used by window with per_source).
        group      DP process group; None = single process.
        """
        _check_rewards(rewards)
        num_local = rewards.shape[0]
        has_expert = _bool_vector(has_expert, num_local, "has_expert", rewards.device)
        sources = list(sources) if sources is not None else [DEFAULT_SOURCE] * num_local
        if len(sources) != num_local:
            raise ValueError(f"sources has {len(sources)} entries for {num_local} prompts")

        solved = self._solved(rewards)
        transitions = []
        if self.cfg.mode == "window":
            transitions = self._update_window(rewards, sources, step, group)
        wants_sft = self._wants_sft(solved, advantages, sources)
        gates = ~(wants_sft & has_expert)

        local = count_vector(num_local, (~gates).sum(), (wants_sft & ~has_expert).sum(),
                             rewards.numel(), (rewards > self.cfg.eps).sum(), solved.sum())
        num_prompts, num_sft, num_no_expert, num_responses, num_success, num_solved = (
            all_reduce_sum(local, group).tolist())
        sft_fraction = num_sft / num_prompts if num_prompts > 0 else 0.0
        hybrid_on = self._regime_on() if self.cfg.mode in REGIME_MODES else num_sft > 0

        stats = {
            "switch/sft_fraction": sft_fraction,
            "switch/hybrid_on": float(hybrid_on),
            "switch/num_prompts": num_prompts,
            "switch/no_expert_prompts": num_no_expert,
            "switch/success_rate": num_success / num_responses if num_responses > 0 else 0.0,
            "switch/solved_fraction": num_solved / num_prompts if num_prompts > 0 else 0.0,
            "switch/transitions": float(len(transitions)),
        }
        stats.update(self._window_stats())
        return SwitchDecision(gates=gates, hybrid_on=hybrid_on, num_prompts=int(num_prompts),
                              num_sft_prompts=int(num_sft), sft_fraction=sft_fraction,
                              transitions=transitions, stats=stats)

    def _solved(self, rewards: torch.Tensor) -> torch.Tensor:
        return rewards.amax(dim=1) > self.cfg.eps

    def _wants_sft(self, solved: torch.Tensor, advantages: Optional[torch.Tensor],
                   sources: list) -> torch.Tensor:
        """[P_local] bool: the mode would route this prompt to SFT (before expert availability)."""
        mode = self.cfg.mode
        if mode == "off":
            return torch.zeros_like(solved)
        if mode == "per_prompt":
            return ~solved
        if mode == "adv_gate":
            if advantages is None or advantages.shape[0] != solved.shape[0]:
                raise ValueError("switch mode 'adv_gate' needs advantages [P_local, K] in decide()")
            return ~(advantages.abs().amax(dim=1) > self.cfg.eps)
        regime = torch.tensor([self._regime_on(source) for source in sources], dtype=torch.bool,
                              device=solved.device)
        return regime if self.cfg.route == "all" else regime & ~solved

    def _regime_on(self, source: Optional[str] = None) -> bool:
        """Regime state of `source`'s bucket, or of any bucket when source is None."""
        mode = self.cfg.mode
        if mode == "always_sft":
            return True
        if mode == "probe":
            if self._probe is None:
                raise RuntimeError("switch mode 'probe': call AdaptiveSwitch.probe() before decide()")
            return self._probe["hybrid_on"]
        if source is None:
            return any(bucket["on"] for bucket in self._window.values())
        key = source if self.cfg.per_source else _ALL
        return self._window.get(key, {"on": False})["on"]

    # ---- window (EMA + hysteresis) ------------------------------------------------------------
    def _update_window(self, rewards: torch.Tensor, sources: list, step: int,
                       group: ProcessGroup) -> list:
        """Fold this step's DP-global success rate of each bucket into its EMA; flip states."""
        buckets = [_ALL] + (_global_names(sources, group) if self.cfg.per_source else [])
        num_responses = torch.full((rewards.shape[0],), float(rewards.shape[1]), dtype=torch.float64)
        num_success = (rewards > self.cfg.eps).sum(dim=1).to(device="cpu", dtype=torch.float64)
        per_prompt = torch.stack([num_responses, num_success], dim=1)  # [P_local, 2]
        local = torch.zeros(len(buckets), 2, dtype=torch.float64)
        local[0] = per_prompt.sum(dim=0)
        if self.cfg.per_source:
            rows = torch.tensor([buckets.index(source) for source in sources], dtype=torch.long)
            local.index_add_(0, rows, per_prompt)
        totals = all_reduce_sum(local, group).tolist()

        transitions = []
        for name, (responses, successes) in zip(buckets, totals):
            if responses == 0:
                continue  # no data for this bucket this step: keep its EMA and state
            rate = successes / responses
            bucket = self._window.setdefault(name, {"ema": None, "on": False})
            decay = self.cfg.ema_decay
            bucket["ema"] = rate if bucket["ema"] is None else decay * bucket["ema"] + (1 - decay) * rate
            # _ALL only drives decisions when not per_source; per source it is just logged
            if name == _ALL and self.cfg.per_source:
                continue
            turn_on = not bucket["on"] and bucket["ema"] < self.cfg.tau_on
            turn_off = bucket["on"] and bucket["ema"] > self.cfg.tau_off
            if turn_on or turn_off:
                record = {"step": int(step), "source": name, "from": _hybrid_state(bucket["on"]),
                          "to": _hybrid_state(not bucket["on"]), "ema": bucket["ema"]}
                bucket["on"] = not bucket["on"]
                transitions.append(record)
        self.transitions.extend(transitions)
        return transitions

    def _window_stats(self) -> dict:
        stats = {}
        for name, bucket in self._window.items():
            if name == _ALL:
                stats["switch/ema_success"] = bucket["ema"]
            else:
                stats[f"switch/ema_success/{name}"] = bucket["ema"]
                stats[f"switch/hybrid_on/{name}"] = float(bucket["on"])
        return stats

    # ---- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain Python containers (JSON-serialisable)."""
        return {"mode": self.cfg.mode, "probe": copy.deepcopy(self._probe),
                "window": copy.deepcopy(self._window), "transitions": copy.deepcopy(self.transitions)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("mode") != self.cfg.mode:
            raise ValueError(f"switch checkpoint has mode={state.get('mode')!r} but "
                             f"algorithm.switch.mode={self.cfg.mode!r}")
        self._probe = copy.deepcopy(state["probe"])
        self._window = copy.deepcopy(state["window"])
        self.transitions = copy.deepcopy(state["transitions"])


def _check_rewards(rewards: torch.Tensor) -> None:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [num_prompts, K], got shape {tuple(rewards.shape)}")


def _bool_vector(values: Optional[torch.Tensor], size: int, name: str,
                 device: torch.device) -> torch.Tensor:
    if values is None:
        return torch.ones(size, dtype=torch.bool, device=device)
    if values.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {tuple(values.shape)}")
    return values.to(device=device, dtype=torch.bool)


def _global_names(names: list, group: ProcessGroup) -> list:
    """Sorted union of the source names present on any rank (identical order on all ranks)."""
    local = sorted(set(names))
    if group is None:
        return local
    gathered = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, local, group=group)
    return sorted(set().union(*gathered))
