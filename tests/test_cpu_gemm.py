"""model.cpu_gemm (superrl/models/cpu_gemm.py): the decoder's linear layers with their forward and
input-gradient GEMMs on oneDNN give the gradients of a float64 reference within float32 rounding,
keep to a bounded set of oneDNN shapes, and in a real TP2 / TP2 + sequence-parallel gloo world give
the losses and gradients of megatron's own path."""
import psutil
import pytest
import torch

from dist_harness import run_torchrun
from superrl.models import cpu_gemm
from superrl.models.cpu_gemm import OneDNNLinear
from superrl.ops.onednn import OneDNNRows, onednn_linear_works

pytestmark = pytest.mark.skipif(not onednn_linear_works(torch.float32), reason="no working oneDNN linear here")
UNIT_ROUNDOFF = 2.0 ** -24


def _gamma(k: int) -> float:
    """Higham's gamma_k: |fl(a . b) - a . b| <= gamma_k |a| . |b| for a length-k dot product in
    float32 in ANY summation order (blocked, split, padded with zeros). A wrong layout, a dropped
    tail or a stale padding row is an O(1) error, far outside it."""
    return k * UNIT_ROUNDOFF / (1 - k * UNIT_ROUNDOFF)


def _assert_within_rounding(got, want64, abs_a, abs_b, k, what):
    """got (float32) vs the float64 product of a and b, against gamma_k |a| |b| elementwise (plus
    the rounding of got itself to float32)."""
    bound = _gamma(k) * (abs_a @ abs_b) + UNIT_ROUNDOFF * want64.abs()
    excess = (got.double() - want64).abs() - bound
    assert excess.max() <= 0, f"{what}: error exceeds the float32 bound by {excess.max():.3g}"


@pytest.mark.parametrize("rows,inner,outer", [
    (256, 192, 384),   # a multiple of ROW_MULTIPLE: oneDNN as is
    (1000, 192, 384),  # forward pads x (narrower than the output) to 1024; the input gradient is split
    (1000, 512, 128),  # forward split (the output is narrower): 960 on oneDNN; the input gradient pads dy
    (200, 192, 384),   # padding would add > 1/8: split both ways, 192 rows on oneDNN
    (40, 192, 384),    # fewer rows than one multiple: MKL throughout
], ids=["multiple", "pad-forward", "split-forward", "split-small", "mkl"])
def test_gradients_match_float64_reference(rows, inner, outer):
    g = torch.Generator().manual_seed(rows + inner)
    x64, w64, b64, dy64 = (torch.randn(shape, generator=g, dtype=torch.float64)
                           for shape in ((rows, 1, inner), (outer, inner), (outer,), (rows, 1, outer)))
    x, w, b = (t.float().requires_grad_() for t in (x64, w64, b64))
    policy = OneDNNRows(cpu_gemm.ROW_MULTIPLE, capacity=cpu_gemm.ROW_CAPACITY)
    y = OneDNNLinear.apply(x, w, b, False, False, None, policy)
    y.backward(dy64.float())

    x2, dy2 = x64.view(rows, inner), dy64.view(rows, outer)
    _assert_within_rounding(y.view(rows, outer) - b.detach(), x2 @ w64.t(), x2.abs(), w64.abs().t(), inner, "output")
    _assert_within_rounding(x.grad.view(rows, inner), dy2 @ w64, dy2.abs(), w64.abs(), outer, "grad_input")
    _assert_within_rounding(w.grad, dy2.t() @ x2, dy2.abs().t(), x2.abs(), rows, "grad_weight")
    _assert_within_rounding(b.grad, dy2.sum(0), torch.ones(1, rows, dtype=torch.float64), dy2.abs(), rows, "grad_bias")
    assert bool(policy.admitted) == (rows >= cpu_gemm.ROW_MULTIPLE), policy.admitted


def test_row_counts_stay_bounded_and_others_run_megatrons_gemm():
    """Past ROW_CAPACITY distinct row counts the GEMMs are MKL's, bit for bit megatron's matmul."""
    policy = OneDNNRows(cpu_gemm.ROW_MULTIPLE, capacity=cpu_gemm.ROW_CAPACITY)
    w = torch.randn(384, 192)
    for rows in range(64, 64 * (cpu_gemm.ROW_CAPACITY + 8), 40):
        x = torch.randn(rows, 1, 192)
        y = OneDNNLinear.apply(x, w, None, False, False, None, policy)
        if policy.round_up(rows) not in policy.admitted:
            assert torch.equal(y, torch.matmul(x, w.t())), rows
    assert len(policy.admitted) == cpu_gemm.ROW_CAPACITY
    assert all(r % cpu_gemm.ROW_MULTIPLE == 0 for r in policy.admitted)


def test_resident_memory_stays_bounded_over_many_row_counts():
    """oneDNN keeps a primitive per GEMM shape it meets (superrl/ops/onednn.py): 200 more row counts
    through forward and backward kept ~450 MB here without a capacity, ~20 MB with it. (Row counts
    8 apart, so the tensors stay small and the allocator's own growth out of the way.)"""
    policy = OneDNNRows(8, capacity=cpu_gemm.ROW_CAPACITY)
    w = torch.randn(256, 128, requires_grad=True)
    process = psutil.Process()

    def run(rows):
        x = torch.randn(rows, 1, 128, requires_grad=True)
        OneDNNLinear.apply(x, w, None, False, False, None, policy).sum().backward()

    for rows in range(8, 8 * 41, 8):  # the admitted set fills up
        run(rows)
    before = process.memory_info().rss
    for rows in range(8 * 41, 8 * 241, 8):
        run(rows)
    growth_mb = (process.memory_info().rss - before) / 2 ** 20
    assert len(policy.admitted) == cpu_gemm.ROW_CAPACITY
    assert growth_mb < 100, f"RSS grew {growth_mb:.0f} MB"


def test_auto_and_torch_settings_resolve():
    cpu = torch.device("cpu")
    assert cpu_gemm.uses_onednn("auto", torch.float32, cpu)
    assert not cpu_gemm.uses_onednn("auto", torch.bfloat16, cpu)  # bf16 matmul reaches oneDNN already
    assert not cpu_gemm.uses_onednn("torch", torch.float32, cpu)
    with pytest.raises(RuntimeError, match="model.cpu_gemm=onednn"):
        cpu_gemm.uses_onednn("onednn", torch.bfloat16, cpu)


@pytest.fixture(scope="module")
def hidden_256_llama(tmp_path_factory) -> str:
    """Big enough that every linear of a TP2 micro-batch passes oneDNN's size threshold."""
    import make_tiny_model

    out = tmp_path_factory.mktemp("cpu_gemm") / "model"
    make_tiny_model.main(["--arch", "llama", "--out-dir", str(out), "--hidden", "256", "--layers", "2",
                          "--heads", "4", "--kv-heads", "2", "--vocab", "512"])
    return str(out)


def test_tp2_train_steps_match_megatrons_path(hidden_256_llama):
    """Three AdamW steps at TP2 and TP2 + sequence parallelism, model.cpu_gemm=onednn vs torch, in
    one gloo world (tests/workers/cpu_gemm_steps.py), through the padded, split and exact row paths.
    The two paths sum the same float32 products in different orders. Tolerances: each parameter's
    first-step gradient within 1e-5 of its norm (measured ~1e-6, the relative rounding of a few
    layers of float32 sums) and the first loss within 1e-6 (same weights); the later losses within
    5e-5 (measured 8e-6): AdamW at lr 0.01 normalises every update, so a gradient entry near zero
    whose rounding differs moves its weight by up to lr either way (the same happens between TP
    layouts, which test_parallel_sft holds to 1e-5 at these magnitudes on a smaller model)."""
    results = run_torchrun("cpu_gemm_steps.py", 2, ["--hf-dir", hidden_256_llama, "--steps", 3])
    for rank, result in enumerate(results):
        for layout, runs in result.items():
            torch_run, onednn_run = runs["torch"], runs["onednn"]
            assert torch_run["admitted"] == [] and onednn_run["admitted"] == [128, 512, 576], (layout, runs)
            worst = max(onednn_run["grad_rel_diff"].values())
            assert worst <= 1e-5, (rank, layout, onednn_run["grad_rel_diff"])
            got, want = onednn_run["losses"], torch_run["losses"]
            assert abs(got[0] - want[0]) <= 1e-6 and all(abs(a - b) <= 5e-5 for a, b in zip(got, want)), \
                (rank, layout, got, want)
