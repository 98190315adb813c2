"""The critic (models/value.py, trainer/critic.py) in real torchrun gloo worlds: its values against
HF transformers' final hidden states times the head, GAE and DP-global whitening of those values
against a float64 naive loop, and TP2 / TP2+SP / PP2 / DP2 value-loss steps against TP1, with the
replicated head's weights and gradients identical on every TP rank."""
import math

import pytest
import torch

from dist_harness import run_torchrun

GAMMA, LAM = 0.9, 0.8
LAYOUTS = {"tp2": (2, ["--tp", "2"]), "tp2_sp": (2, ["--tp", "2", "--set", "parallel.sequence_parallel=true"]),
           "pp2": (2, ["--pp", "2"]), "dp2": (2, [])}


def _run(hf_dir: str, nproc: int, args) -> list:
    return run_torchrun("critic_steps.py", nproc, ["--hf-dir", hf_dir, *args])


@pytest.fixture(scope="module")
def tp1(tiny_llama):
    return _run(tiny_llama, 1, [])[0]


def _last_stage(results: list) -> list:
    """One result per DP rank (TP rank 0 of the last stage), in DP order."""
    chosen = [r for r in results if r["last_stage"] and r["tp_rank"] == 0]
    return sorted(chosen, key=lambda r: r["dp_rank"])


def _hf_values(hf_dir: str, rows: list, head: dict) -> list:
    """V at each response token's predicting position: HF's final (normed) hidden state . w + b."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float64).eval()
    w = torch.tensor(head["value_head.weight"], dtype=torch.float64)
    b = torch.tensor(head["value_head.bias"], dtype=torch.float64)
    out = []
    for prompt, response in rows:
        ids = torch.tensor([(prompt + response)[:-1] or prompt])
        with torch.no_grad():
            hidden = model.model(input_ids=ids).last_hidden_state[0]
        start = len(prompt) - 1
        out.append([(hidden[t] @ w[0] + b[0]).item() for t in range(start, start + len(response))])
    return out


def _response_values(result: dict) -> list:
    return [[result["old_values"][i][len(p) - 1 + t] for t in range(len(r))]
            for i, (p, r) in enumerate(result["rows"])]


def test_head_starts_at_zero_and_values_match_hf(tp1, tiny_llama):
    assert tp1["head_was_zero"] is True
    # the worker replaced the zero head by a fixed nonzero one before computing the values
    want = _hf_values(tiny_llama, tp1["rows"], tp1["initial_head"])
    for got_row, want_row in zip(_response_values(tp1), want):
        assert got_row == pytest.approx(want_row, abs=1e-5)


def test_gae_and_whitening_of_the_values_match_a_naive_loop(tp1):
    advantages, returns = [], []
    rewards = [r for group in tp1["rewards"] for r in group]
    for reward, values in zip(rewards, _response_values(tp1)):
        n, adv = len(values), []
        for t in range(n):  # A_t = sum_l (gamma lam)^l delta_{t+l}
            deltas = [(reward if u == n - 1 else 0.0) + GAMMA * (values[u + 1] if u + 1 < n else 0.0) - values[u]
                      for u in range(t, n)]
            adv.append(sum((GAMMA * LAM) ** l * d for l, d in enumerate(deltas)))
        advantages.append(adv)
        returns.append([a + v for a, v in zip(adv, values)])
    flat = [a for row in advantages for a in row]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((a - mean) ** 2 for a in flat) / (len(flat) - 1) + 1e-8)
    for i, (prompt, response) in enumerate(tp1["rows"]):
        cols = range(len(prompt) - 1, len(prompt) - 1 + len(response))
        assert [tp1["returns"][i][c] for c in cols] == pytest.approx(returns[i], abs=1e-12)
        assert [tp1["advantages"][i][c] for c in cols] == pytest.approx([(a - mean) / std for a in advantages[i]],
                                                                         abs=1e-10)


def test_value_steps_learn_and_clip(tp1):
    losses = [s["critic/value_loss"] for s in tp1["steps"]]
    assert losses[-1] < losses[0], losses
    assert any(s["critic/vf_clipfrac"] > 0 for s in tp1["steps"][1:])  # cliprange 0.05 binds after step 1


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_reproduces_tp1(tp1, tiny_llama, layout):
    nproc, args = LAYOUTS[layout]
    results = _run(tiny_llama, nproc, args)
    last = _last_stage(results)
    values = [v for r in last for v in _response_values(r)]
    assert sum(values, []) == pytest.approx(sum(_response_values(tp1), []), abs=1e-5)
    for got, want in zip(last[0]["steps"], tp1["steps"]):
        for key in ("critic/value_loss", "critic/vf_clipfrac", "critic/grad_norm"):
            assert got[key] == pytest.approx(want[key], abs=1e-5), key
    for name, want in tp1["head"].items():
        assert torch.tensor(last[0]["head"][name]) == pytest.approx(torch.tensor(want), abs=1e-5)
    # the replicated head: bitwise the same weights and gradients on every TP rank
    heads = [r for r in results if r["last_stage"]]
    assert all(r["head"] == heads[0]["head"] for r in heads)
    assert all(r["head_grad"] == heads[0]["head_grad"] for r in heads if r["dp_rank"] == heads[0]["dp_rank"])


def test_critic_from_a_tp2_megatron_checkpoint_equals_from_hf(tp1, tiny_llama, tmp_path):
    """critic.megatron_dir (resharded TP2 -> TP1 on load, its LM head left on disk) gives the trunk
    critic.hf_dir / model.hf_dir give: the same values bit for bit."""
    from test_convert import check_ok, run_tool

    check_ok(run_tool("convert_hf_to_megatron.py", "--hf-dir", tiny_llama, "--out-dir", tmp_path / "m", "--tp", 2))
    got = _run(tiny_llama, 1, ["--set", f"critic.megatron_dir={tmp_path / 'm'}"])[0]
    assert got["head_was_zero"] is True
    assert got["old_values"] == tp1["old_values"]


@pytest.mark.parametrize("overrides,message", [
    (["algorithm.advantage=gae", "algorithm.switch.mode=adv_gate"], "adv_gate"),
    (["critic.hf_dir=/somewhere"], "trains no critic"),
    (["algorithm.advantage=gae", "algorithm.gamma=1.5"], "algorithm.gamma"),
    (["algorithm.advantage=gae", "algorithm.lam=-0.1"], "algorithm.lam"),
    (["algorithm.advantage=gae", "critic.cliprange_value=0"], "critic.cliprange_value"),
    (["algorithm.advantage=gae", "critic.warmup_steps=-1"], "critic.warmup_steps"),
    (["algorithm.advantage=gae", "critic.optim.lr=0"], "critic.optim.lr"),
])
def test_config_refuses_bad_critic_settings(overrides, message):
    from superrl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
