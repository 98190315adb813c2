"""superrl.ops fused log-prob/entropy: values and gradients vs a float64 naive reference, ignored
positions, None upstream grads, chunking, input validation, and TP2 (gloo) vs TP1."""
import pytest
import torch

import superrl.ops._softmax_chunks as softmax_chunks
from dist_harness import run_torchrun
from superrl.ops import fused_linear_logprobs_and_entropy, logprobs_and_entropy
from superrl.ops.fused_linear import DenseProjection, chunked_linear_logprobs_and_entropy

TOKENS, VOCAB, HIDDEN = 37, 101, 24  # odd: neither a multiple of the chunk nor of the slice
CHUNK = 8
TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4}
# Which upstream grads reach (logprobs, entropy): both terms, and each alone (the other is None).
UPSTREAM = {"both": (True, True), "logprobs_only": (True, False), "entropy_only": (False, True)}


@pytest.fixture(autouse=True)
def small_slices(monkeypatch):
    """3 rows of 101 per slice, so the row slicing inside each chunk is exercised with a ragged tail."""
    monkeypatch.setattr(softmax_chunks, "SLICE_ELEMENTS", 3 * VOCAB)


def make_inputs(seed=0, tokens=TOKENS, vocab=VOCAB, hidden=HIDDEN):
    gen = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, vocab, (tokens,), generator=gen)
    targets[[1, 10, tokens - 1]] = -100
    return {"hidden": torch.randn(tokens, hidden, generator=gen, dtype=torch.float64),
            "weight": torch.randn(vocab, hidden, generator=gen, dtype=torch.float64) * 0.5,
            "targets": targets,
            "grad_logprobs": torch.randn(tokens, generator=gen, dtype=torch.float64),
            "grad_entropy": torch.randn(tokens, generator=gen, dtype=torch.float64)}


def naive_reference(logits, targets):
    """float64 log_softmax + gather + entropy through autograd, zero at ignored positions."""
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    picked = log_probs.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1)
    ignored = targets == -100
    return torch.where(ignored, 0, picked), torch.where(ignored, 0, entropy)


def naive_linear_reference(hidden, weight, targets):
    return naive_reference(hidden @ weight.t(), targets)


def loss_of(outputs, inputs, upstream):
    """sum g*logprobs + sum e*entropy over the terms switched on in `upstream`."""
    use_logprobs, use_entropy = upstream
    loss = 0
    if use_logprobs:
        loss = loss + (outputs[0] * inputs["grad_logprobs"].to(outputs[0].dtype)).sum()
    if use_entropy:
        loss = loss + (outputs[1] * inputs["grad_entropy"].to(outputs[1].dtype)).sum()
    return loss


def run(op, leaves, inputs, upstream, dtype, **kwargs):
    leaves = [leaf.detach().to(dtype).requires_grad_() for leaf in leaves]
    outputs = op(*leaves, inputs["targets"], **kwargs)
    loss_of(outputs, inputs, upstream).backward()
    return [*outputs], [leaf.grad for leaf in leaves]


def assert_rel_close(actual, expected, tol, what):
    actual, expected = actual.detach().double(), expected.detach().double()
    error, scale = float((actual - expected).abs().max()), float(expected.abs().max())
    assert error <= tol * scale, f"{what}: max abs error {error:.3g} > {tol} * {scale:.3g}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("upstream", UPSTREAM.values(), ids=UPSTREAM.keys())
def test_logits_path_matches_float64_reference(dtype, upstream):
    inputs = make_inputs()
    logits = inputs["hidden"] @ inputs["weight"].t()
    expected, (expected_grad,) = run(naive_reference, [logits], inputs, upstream, torch.float64)
    actual, (actual_grad,) = run(logprobs_and_entropy, [logits], inputs, upstream, dtype)
    assert actual[0].dtype == dtype and actual_grad.dtype == dtype
    for name, a, e in zip(["logprobs", "entropy", "dlogits"], [*actual, actual_grad],
                          [*expected, expected_grad]):
        assert_rel_close(a, e, TOLERANCE[dtype], name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("upstream", UPSTREAM.values(), ids=UPSTREAM.keys())
def test_fused_linear_matches_float64_reference(dtype, upstream):
    inputs = make_inputs()
    leaves = [inputs["hidden"], inputs["weight"]]
    expected, expected_grads = run(naive_linear_reference, leaves, inputs, upstream, torch.float64)
    actual, actual_grads = run(fused_linear_logprobs_and_entropy, leaves, inputs, upstream, dtype,
                               chunk_size=CHUNK)
    for name, a, e in zip(["logprobs", "entropy", "dhidden", "dweight"],
                          [*actual, *actual_grads], [*expected, *expected_grads]):
        assert_rel_close(a, e, TOLERANCE[dtype], name)


def test_ignored_positions_are_zero_with_zero_gradient():
    inputs = make_inputs()
    ignored = inputs["targets"] == -100
    (logprobs, entropy), (grad_logits,) = run(logprobs_and_entropy, [inputs["hidden"] @ inputs["weight"].t()],
                                              inputs, UPSTREAM["both"], torch.float64)
    (_, _), (grad_hidden, _) = run(fused_linear_logprobs_and_entropy, [inputs["hidden"], inputs["weight"]],
                                   inputs, UPSTREAM["both"], torch.float64, chunk_size=CHUNK)
    for tensor in (logprobs, entropy, grad_logits, grad_hidden):
        assert torch.count_nonzero(tensor[ignored]) == 0
    assert torch.count_nonzero(grad_logits[~ignored]) > 0


def test_half_precision_inputs_reduce_in_float32():
    inputs = make_inputs()
    logits = inputs["hidden"] @ inputs["weight"].t()
    expected, (expected_grad,) = run(naive_reference, [logits], inputs, UPSTREAM["both"], torch.float64)
    actual, (actual_grad,) = run(logprobs_and_entropy, [logits], inputs, UPSTREAM["both"], torch.bfloat16)
    assert actual[0].dtype == torch.float32 and actual_grad.dtype == torch.bfloat16
    # bf16 logits carry ~2**-9 relative rounding of values up to ~10: compare at that scale.
    assert_rel_close(actual[0], expected[0], 2e-2, "logprobs")
    assert_rel_close(actual_grad, expected_grad, 2e-2, "dlogits")
    leaves = [inputs["hidden"], inputs["weight"]]
    expected, expected_grads = run(naive_linear_reference, leaves, inputs, UPSTREAM["both"], torch.float64)
    actual, actual_grads = run(fused_linear_logprobs_and_entropy, leaves, inputs, UPSTREAM["both"],
                               torch.bfloat16, chunk_size=CHUNK)
    assert actual[1].dtype == torch.float32 and actual_grads[1].dtype == torch.bfloat16
    for name, a, e in zip(["logprobs", "dhidden", "dweight"], [actual[0], *actual_grads],
                          [expected[0], *expected_grads]):
        assert_rel_close(a, e, 5e-2, name)


class RecordingProjection(DenseProjection):
    """The real dense projection, recording the shape of every logits block it produces."""

    def __init__(self):
        self.block_shapes = []

    def logits(self, operands, rows, out):
        block = super().logits(operands, rows, out)
        self.block_shapes.append(tuple(block.shape))
        return block


def test_fused_linear_never_holds_more_than_one_chunk_of_logits():
    inputs = make_inputs()
    projection = RecordingProjection()
    saved_shapes = []
    hidden = inputs["hidden"].clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved_shapes.append(tuple(t.shape)) or t,
                                                  lambda t: t):
        logprobs, entropy = chunked_linear_logprobs_and_entropy(
            projection, hidden, inputs["weight"], inputs["targets"], chunk_size=CHUNK)
    (logprobs.sum() + entropy.sum()).backward()
    assert max(rows for rows, _ in projection.block_shapes) == CHUNK
    assert sum(rows for rows, _ in projection.block_shapes) == 2 * TOKENS  # forward + recompute
    assert (TOKENS, VOCAB) not in saved_shapes


def test_logits_path_saves_only_logits_and_token_vectors():
    inputs = make_inputs()
    saved_shapes = []
    logits = (inputs["hidden"] @ inputs["weight"].t()).requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved_shapes.append(tuple(t.shape)) or t,
                                                  lambda t: t):
        logprobs_and_entropy(logits, inputs["targets"])
    assert sorted(saved_shapes) == sorted([(TOKENS, VOCAB), (TOKENS,), (TOKENS,)])


class DropGradient(torch.autograd.Function):
    """Identity whose backward returns no gradient: the op downstream then gets None for both outputs."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return None


@pytest.mark.parametrize("op, leaves", [(logprobs_and_entropy, ["logits"]),
                                        (fused_linear_logprobs_and_entropy, ["hidden", "weight"])])
def test_backward_with_no_upstream_gradient_gives_none(op, leaves):
    inputs = make_inputs()
    inputs["logits"] = inputs["hidden"] @ inputs["weight"].t()
    leaves = [inputs[name].clone().requires_grad_() for name in leaves]
    logprobs, entropy = op(*leaves, inputs["targets"])
    (DropGradient.apply(logprobs).sum() + DropGradient.apply(entropy).sum()).backward()
    assert all(leaf.grad is None for leaf in leaves)


@pytest.mark.parametrize("call, message", [
    (lambda i: logprobs_and_entropy(i["hidden"][0], i["targets"]), "logits must be 2-D"),
    (lambda i: logprobs_and_entropy(i["hidden"].long(), i["targets"]), "floating"),
    (lambda i: logprobs_and_entropy(i["hidden"], i["targets"][:5]), rf"shape \[{TOKENS}\]"),
    (lambda i: logprobs_and_entropy(i["hidden"], i["targets"].double()), "integer"),
    (lambda i: logprobs_and_entropy(i["hidden"], i["targets"].clamp(max=HIDDEN)), rf"\[0, {HIDDEN}\)"),
    (lambda i: logprobs_and_entropy(i["hidden"], i["targets"] - 101), "targets\\[0\\] = -"),
    (lambda i: fused_linear_logprobs_and_entropy(i["hidden"], i["weight"][:, :5], i["targets"]),
     "disagree on the hidden size"),
    (lambda i: fused_linear_logprobs_and_entropy(i["hidden"], i["weight"].float(), i["targets"]),
     "share dtype"),
    (lambda i: fused_linear_logprobs_and_entropy(i["hidden"], i["weight"], i["targets"], chunk_size=0),
     "chunk_size must be a positive int"),
])
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(make_inputs())


def test_tp2_gloo_equals_tp1():
    results = run_torchrun("ops_tp.py", nproc=2)
    for result in results:
        for path in ("logits_path", "linear_path"):
            assert max(result[path]) < 1e-12, (result["rank"], path, result[path])
