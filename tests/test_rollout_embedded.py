"""EmbeddedEngine against `transformers` on tiny random Llama (tied), Qwen2 (qkv bias, untied), Qwen3
(q/k norms, head_dim != hidden / heads) and Llama with Llama 3 and linear RoPE scaling."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from superrl.rollout import Completion, EmbeddedEngine, SamplingParams, gemm

# Different lengths in one batch; 6 prompts through 2 slots exercises continuous batching.
PROMPTS = [[1, 17, 42, 99, 7], [1, 300], [1, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [1],
           [1, 250, 251, 252, 253, 254, 255, 256], [1, 64, 32]]
MAX_TOKENS = 20
LOGPROB_TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops on a shared 2-core box: two OpenMP threads only contend with each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module", params=["onednn", "transposed"])
def gemm_backend(request):
    """Every test runs on both GEMM backends (gemm.py): oneDNN is what this CPU box picks (here for
    every product: the tiny test models' products and row counts fall outside its size rules), the
    transposed-copy one is what CPUs without it (and, as views, GPUs) run."""
    if request.param == "onednn" and not gemm.onednn_linear_works(torch.float32):
        pytest.skip("torch has no working oneDNN linear here")
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "transposed":
            patch.setattr(gemm, "onednn_linear_works", lambda dtype: False)
        else:
            patch.setattr(gemm.OneDNNGemm, "_on_onednn", lambda self, x, weight: True)
        yield request.param


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3", "llama3_rope", "llama_linear_rope"])
def model_dir(request):
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="module")
def hf_model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


@pytest.fixture(scope="module")
def engine(model_dir, gemm_backend):
    return EmbeddedEngine(model_dir, max_batch_size=2)


def hf_greedy(model, prompt: list, max_tokens: int) -> list:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=max_tokens, min_new_tokens=max_tokens)
    return out[0, len(prompt):].tolist()


@torch.no_grad()
def hf_token_logprobs(model, prompt: list, completion: list) -> torch.Tensor:
    logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1:-1]
    return torch.log_softmax(logits.double(), -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


def greedy(max_tokens=MAX_TOKENS, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kwargs)


def token_ids(outputs: list) -> list:
    return [[c.token_ids for c in completions] for completions in outputs]


def test_greedy_equals_transformers_token_for_token(engine, hf_model):
    outputs = engine.generate(PROMPTS, greedy(), ignore_eos=True)
    assert len(outputs) == len(PROMPTS) and all(len(o) == 1 for o in outputs)
    for prompt, (completion,) in zip(PROMPTS, outputs):
        assert isinstance(completion, Completion) and completion.finish_reason == "length"
        assert completion.token_ids == hf_greedy(hf_model, prompt, MAX_TOKENS)
        assert len(completion.logprobs) == MAX_TOKENS


def test_logprobs_are_raw_model_logprobs(engine, hf_model):
    """Sampled with temperature/top-k/top-p, the log-probs are still the unfiltered T=1 ones."""
    params = SamplingParams(n=2, temperature=0.7, top_k=20, top_p=0.9, max_tokens=MAX_TOKENS, seed=3)
    outputs = engine.generate(PROMPTS, params, ignore_eos=True)
    for prompt, completions in zip(PROMPTS, outputs):
        for completion in completions:
            expected = hf_token_logprobs(hf_model, prompt, completion.token_ids)
            got = torch.tensor(completion.logprobs, dtype=torch.float64)
            assert (got - expected).abs().max().item() <= LOGPROB_TOL


def test_llama3_rope_scaling_changes_these_logprobs(tiny_llama, tiny_llama3_rope):
    """The same weights without the scaling score the scaled engine's tokens differently, by far
    more than the tolerance, so the tests above would fail for an engine that ignored `rope_type: llama3`."""
    unscaled = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    outputs = EmbeddedEngine(tiny_llama3_rope).generate(PROMPTS, greedy(), ignore_eos=True)
    diffs = [(torch.tensor(completion.logprobs, dtype=torch.float64)
              - hf_token_logprobs(unscaled, prompt, completion.token_ids)).abs().max().item()
             for prompt, (completion,) in zip(PROMPTS, outputs)]
    assert max(diffs) > 10 * LOGPROB_TOL


def test_seeded_sampling_is_reproducible(model_dir, engine):
    params = SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=1234)
    first = token_ids(engine.generate(PROMPTS, params, ignore_eos=True))
    assert token_ids(engine.generate(PROMPTS, params, ignore_eos=True)) == first
    wide = EmbeddedEngine(model_dir, max_batch_size=16, seed=99)  # other slots, other batch mates
    assert token_ids(wide.generate(PROMPTS, params, ignore_eos=True)) == first
    params.seed = 1235
    assert token_ids(engine.generate(PROMPTS, params, ignore_eos=True)) != first
    for samples in first:
        assert len({tuple(s) for s in samples}) == 3, "the n samples of a prompt should differ"


def test_unseeded_calls_follow_the_engine_seed(model_dir):
    params = SamplingParams(temperature=1.0, max_tokens=8)
    a, b = EmbeddedEngine(model_dir, seed=5), EmbeddedEngine(model_dir, seed=5)
    first = token_ids(a.generate(PROMPTS, params, ignore_eos=True))
    assert token_ids(b.generate(PROMPTS, params, ignore_eos=True)) == first
    assert token_ids(a.generate(PROMPTS, params, ignore_eos=True)) != first  # a fresh draw per call


def test_top_k_1_equals_greedy(engine):
    top1 = SamplingParams(temperature=1.3, top_k=1, max_tokens=MAX_TOKENS, seed=0)
    assert token_ids(engine.generate(PROMPTS, top1, ignore_eos=True)) == \
        token_ids(engine.generate(PROMPTS, greedy(), ignore_eos=True))


def test_stop_token_ends_the_completion(engine):
    full = engine.generate(PROMPTS[:1], greedy(), ignore_eos=True)[0][0].token_ids
    stop = full[5]
    cut = full.index(stop)
    (completion,), = engine.generate(PROMPTS[:1], greedy(stop_token_ids=[stop]), ignore_eos=True)
    assert completion.token_ids == full[:cut + 1]  # the stop token is included
    assert completion.finish_reason == "stop"
    assert len(completion.logprobs) == cut + 1


def test_eos_from_config_stops_unless_ignored(model_dir, tmp_path):
    full = EmbeddedEngine(model_dir).generate(PROMPTS[:1], greedy(), ignore_eos=True)[0][0].token_ids
    eos_dir = tmp_path / "model"
    shutil.copytree(model_dir, eos_dir)
    config = json.loads((eos_dir / "config.json").read_text())
    config["eos_token_id"] = full[3]
    (eos_dir / "config.json").write_text(json.dumps(config))
    eos_engine = EmbeddedEngine(str(eos_dir))
    (completion,), = eos_engine.generate(PROMPTS[:1], greedy())
    assert completion.finish_reason == "stop" and completion.token_ids == full[:full.index(full[3]) + 1]
    assert eos_engine.generate(PROMPTS[:1], greedy(), ignore_eos=True)[0][0].token_ids == full


def perturbed_weights(model_dir: str) -> dict:
    generator = torch.Generator().manual_seed(7)
    tensors = load_file(f"{model_dir}/model.safetensors")
    return {name: t + 0.05 * torch.randn(t.shape, generator=generator) for name, t in tensors.items()}


def test_update_weights_in_place_matches_transformers(model_dir):
    engine = EmbeddedEngine(model_dir, max_batch_size=4)
    before = token_ids(engine.generate(PROMPTS, greedy(), ignore_eos=True))
    pointers = {name: t.data_ptr() for name, t in engine.state_dict().items()}
    fused = [layer.qkv.data_ptr() for layer in engine.weights.layers]

    new_weights = perturbed_weights(model_dir)
    engine.update_weights(new_weights.items())
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    hf_model.load_state_dict(new_weights, strict=False)

    after = engine.generate(PROMPTS, greedy(), ignore_eos=True)
    assert token_ids(after) != before
    for prompt, (completion,) in zip(PROMPTS, after):
        assert completion.token_ids == hf_greedy(hf_model, prompt, MAX_TOKENS)
    assert {name: t.data_ptr() for name, t in engine.state_dict().items()} == pointers
    assert [layer.qkv.data_ptr() for layer in engine.weights.layers] == fused


def test_tied_model_accepts_lm_head_as_the_embedding(tiny_llama):
    engine = EmbeddedEngine(tiny_llama)
    embed = engine.state_dict()["model.embed_tokens.weight"]
    assert "lm_head.weight" not in engine.state_dict()
    engine.update_weights([("lm_head.weight", torch.ones_like(embed))])
    assert torch.equal(embed, torch.ones_like(embed))


def test_update_weights_rejects_unknown_names_and_wrong_shapes(tiny_qwen2):
    engine = EmbeddedEngine(tiny_qwen2)
    with pytest.raises(KeyError, match="model.layers.9.mlp.up_proj.weight"):
        engine.update_weights([("model.layers.9.mlp.up_proj.weight", torch.zeros(192, 64))])
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.k_proj.bias.*\(33,\).*\(32,\)"):
        engine.update_weights([("model.layers.0.self_attn.k_proj.bias", torch.zeros(33))])


def test_bad_prompts_are_rejected(tiny_llama):
    engine = EmbeddedEngine(tiny_llama)
    with pytest.raises(ValueError, match="prompt 1 has a token id outside"):
        engine.generate([[1, 2], [1, 512]], greedy())
    with pytest.raises(ValueError, match="prompt 0 has no tokens"):
        engine.generate([[]], greedy())


def test_engine_runs_the_backend_under_test(engine, gemm_backend):
    expected = gemm.OneDNNGemm if gemm_backend == "onednn" else gemm.TransposedGemm
    assert type(engine.decoder.gemm) is expected


def test_writes_through_state_dict_views_reach_the_forward(model_dir):
    """The transposed backend multiplies by derived [in, out] copies of the weights (gemm.py); a
    write through a `state_dict()` view, not only `update_weights`, must reach them."""
    engine = EmbeddedEngine(model_dir, max_batch_size=4)
    engine.generate(PROMPTS, greedy(), ignore_eos=True)  # the copies exist before the write
    new_weights = perturbed_weights(model_dir)
    live = engine.state_dict()
    with torch.no_grad():
        for name, tensor in new_weights.items():
            if name in live:
                live[name].copy_(tensor)
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    hf_model.load_state_dict(new_weights, strict=False)
    for prompt, (completion,) in zip(PROMPTS, engine.generate(PROMPTS, greedy(), ignore_eos=True)):
        assert completion.token_ids == hf_greedy(hf_model, prompt, MAX_TOKENS)
