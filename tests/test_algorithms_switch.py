"""Adaptive Switch: hand-computed gates for every mode, probe, window hysteresis, state round trip."""
import json

import pytest
import torch

from superrl.algorithms import AdaptiveSwitch, SwitchConfig, grpo_advantages

# prompt 0 all failed, 1 one success, 2 all-equal nonzero, 3 one success
REWARDS = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.0, 1.0]])


def _decide(mode, rewards=REWARDS, **kwargs):
    cfg_keys = {"route", "per_source", "tau_on", "tau_off", "ema_decay", "probe_threshold"}
    cfg = SwitchConfig(mode=mode, **{k: v for k, v in kwargs.items() if k in cfg_keys})
    switch = AdaptiveSwitch(cfg)
    return switch.decide(rewards, step=0, **{k: v for k, v in kwargs.items() if k not in cfg_keys})


@pytest.mark.parametrize("mode,kwargs,gates,sft_fraction", [
    ("off", {}, [1, 1, 1, 1], 0.0),
    ("per_prompt", {}, [0, 1, 1, 1], 0.25),
    ("adv_gate", {"advantages": grpo_advantages(REWARDS)}, [0, 1, 0, 1], 0.5),
    ("always_sft", {}, [0, 0, 0, 0], 1.0),
    ("always_sft", {"route": "failed"}, [0, 1, 1, 1], 0.25),
])
def test_gates_per_mode(mode, kwargs, gates, sft_fraction):
    decision = _decide(mode, **kwargs)
    assert decision.gates.tolist() == [bool(g) for g in gates]
    assert decision.sft_fraction == sft_fraction
    assert decision.num_prompts == 4 and decision.num_sft_prompts == 4 - sum(gates)
    assert decision.stats["switch/sft_fraction"] == sft_fraction
    assert decision.stats["switch/success_rate"] == pytest.approx(5 / 12)
    assert decision.stats["switch/solved_fraction"] == 0.75


def test_prompt_without_expert_stays_pg_and_is_counted():
    decision = _decide("adv_gate", advantages=grpo_advantages(REWARDS),
                       has_expert=torch.tensor([False, True, True, True]))
    assert decision.gates.tolist() == [True, True, False, True]
    assert decision.sft_fraction == 0.25
    assert decision.stats["switch/no_expert_prompts"] == 1
    assert decision.hybrid_on


def test_adv_gate_needs_advantages():
    with pytest.raises(ValueError, match="adv_gate"):
        _decide("adv_gate")


@pytest.mark.parametrize("solved_prompts,hybrid_on", [(1, True), (2, False)])
def test_probe_decides_once_for_the_whole_run(solved_prompts, hybrid_on):
    switch = AdaptiveSwitch(SwitchConfig(mode="probe", probe_threshold=0.2))
    with pytest.raises(RuntimeError, match="probe"):
        switch.decide(REWARDS, step=0)
    probe_rewards = torch.zeros(10, 4)
    probe_rewards[:solved_prompts, 0] = 1.0  # fraction 0.1 (< 0.2: sparse) or 0.2 (not below)
    stats = switch.probe(probe_rewards)
    assert stats["switch/probe_success_fraction"] == solved_prompts / 10
    assert stats["switch/hybrid_on"] == float(hybrid_on)
    for step in range(3):  # dense rewards later do not change a fixed probe decision
        decision = switch.decide(torch.ones(4, 3), step=step)
        assert decision.hybrid_on == hybrid_on
        assert decision.gates.tolist() == [not hybrid_on] * 4
    with pytest.raises(RuntimeError, match="already"):
        switch.probe(probe_rewards)


def _rate_rewards(successes: int) -> torch.Tensor:
    """2 prompts x 5 responses with `successes` rewards of 1 (success rate successes / 10)."""
    flat = torch.zeros(10)
    flat[:successes] = 1.0
    return flat.view(2, 5)


def test_window_hysteresis_transitions():
    cfg = SwitchConfig(mode="window", ema_decay=0.5, tau_on=0.2, tau_off=0.5)
    switch = AdaptiveSwitch(cfg)
    # rate:  0     .6    .8     .3     .1      0
    # ema:   0     .3    .55    .425   .2625   .13125
    # state: on    on    off    off    off     on
    expected = [(0.0, True), (0.3, True), (0.55, False), (0.425, False), (0.2625, False),
                (0.13125, True)]
    for step, (successes, (ema, on)) in enumerate(zip([0, 6, 8, 3, 1, 0], expected)):
        decision = switch.decide(_rate_rewards(successes), step=step)
        assert decision.stats["switch/ema_success"] == pytest.approx(ema)
        assert decision.hybrid_on == on
        assert decision.gates.tolist() == [not on, not on]
        assert decision.stats["switch/transitions"] == float(step in (0, 2, 5))
    assert [(t["step"], t["from"], t["to"]) for t in switch.transitions] == [
        (0, "rl", "hybrid"), (2, "hybrid", "rl"), (5, "rl", "hybrid")]
    assert [t["ema"] for t in switch.transitions] == pytest.approx([0.0, 0.55, 0.13125])


def test_window_per_source_keeps_one_state_per_source():
    cfg = SwitchConfig(mode="window", per_source=True, ema_decay=0.0, tau_on=0.2, tau_off=0.5,
                       route="all")
    switch = AdaptiveSwitch(cfg)
    rewards = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    sources = ["gsm8k", "gsm8k", "math", "hotpotqa"]
    decision = switch.decide(rewards, step=0, sources=sources)
    # gsm8k 3/4, math 0/2 -> on, hotpotqa 1/2; overall 4/8 (logged only)
    assert decision.gates.tolist() == [True, True, False, True]
    assert decision.stats["switch/ema_success/math"] == 0.0
    assert decision.stats["switch/hybrid_on/math"] == 1.0
    assert decision.stats["switch/hybrid_on/gsm8k"] == 0.0
    assert decision.stats["switch/ema_success"] == 0.5
    assert [t["source"] for t in decision.transitions] == ["math"]
    # a step without math prompts keeps math's state
    decision = switch.decide(rewards[:2], step=1, sources=sources[:2])
    assert decision.stats["switch/hybrid_on/math"] == 1.0 and decision.transitions == []


def test_state_dict_round_trip_continues_identically():
    cfg = SwitchConfig(mode="window", ema_decay=0.5, tau_on=0.2, tau_off=0.5)
    original = AdaptiveSwitch(cfg)
    for step, successes in enumerate([0, 6, 8]):
        original.decide(_rate_rewards(successes), step=step)
    state = json.loads(json.dumps(original.state_dict()))  # checkpoint-serialisable
    restored = AdaptiveSwitch(cfg)
    restored.load_state_dict(state)
    for step, successes in enumerate([3, 1, 0], start=3):
        a = original.decide(_rate_rewards(successes), step=step)
        b = restored.decide(_rate_rewards(successes), step=step)
        assert a.gates.tolist() == b.gates.tolist() and a.stats == b.stats
    assert original.state_dict() == restored.state_dict()
    with pytest.raises(ValueError, match="mode='window'"):
        AdaptiveSwitch(SwitchConfig(mode="per_prompt")).load_state_dict(state)


def test_probe_state_round_trip():
    switch = AdaptiveSwitch(SwitchConfig(mode="probe"))
    switch.probe(torch.zeros(8, 2))
    restored = AdaptiveSwitch(SwitchConfig(mode="probe"))
    restored.load_state_dict(switch.state_dict())
    assert restored.decide(REWARDS, step=0).hybrid_on


@pytest.mark.parametrize("kwargs,key", [
    ({"mode": "sometimes"}, "algorithm.switch.mode"),
    ({"tau_on": 0.5, "tau_off": 0.5}, "algorithm.switch.tau_on"),
    ({"ema_decay": 1.0}, "algorithm.switch.ema_decay"),
    ({"route": "some"}, "algorithm.switch.route"),
])
def test_bad_switch_config_names_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        AdaptiveSwitch(SwitchConfig(**kwargs))


def test_bad_inputs():
    switch = AdaptiveSwitch(SwitchConfig(mode="per_prompt"))
    with pytest.raises(ValueError, match="has_expert"):
        switch.decide(REWARDS, step=0, has_expert=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_prompts, K"):
        switch.decide(REWARDS.flatten(), step=0)
