"""Weight sync trainer -> rollout engine: the bucket plan, log-prob equality after training at
TP2 / PP2 / TP2xPP2, and the peak-memory bound."""
import pytest
from safetensors import safe_open

from dist_harness import REPO_ROOT, run_torchrun
from superrl.hf_config import load_arch
from superrl.sync import build_plan

SYNC_MEASURE = REPO_ROOT / "bench" / "workers" / "sync_measure.py"  # shared with bench/weight_sync.py

TOL = 1e-5
MB = 2**20
# RSS also moves with Python objects and allocator bookkeeping of the sync itself (lists, views,
# small norm-sized tensors); this is that, not tensor data.
RSS_ALLOWANCE = 256 * 1024


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("pp", [1, 2])
def test_plan_covers_the_checkpoint_exactly(request, arch, pp):
    """Names and shapes computed from the architecture alone equal the HF checkpoint's tensors."""
    hf_dir = request.getfixturevalue(f"tiny_{arch}")
    plan = build_plan(load_arch(hf_dir), pp, bucket_bytes=40_000, element_size=4)
    planned = {s.name: s.shape for b in plan for s in b.slots}
    with safe_open(f"{hf_dir}/model.safetensors", "pt") as f:
        checkpoint = {n: tuple(f.get_slice(n).get_shape()) for n in f.keys()}
    assert len(planned) == sum(len(b.slots) for b in plan), "a tensor is planned twice"
    assert planned == checkpoint
    assert [b.stage for b in plan] == sorted(b.stage for b in plan)
    for b in plan:
        assert len(b.slots) == 1 or b.numel * 4 <= 40_000, "only a lone tensor may exceed the bucket"


@pytest.fixture(scope="module")
def synced_layouts(tiny_llama, tiny_qwen2, tiny_qwen3, tiny_llama3_rope) -> list:
    """One 4-rank world runs every layout in turn (so TP2 and PP2 also have DP2: two engines)."""
    layouts = [f"{tiny_llama}:2:1", f"{tiny_llama}:1:2", f"{tiny_qwen2}:2:2", f"{tiny_qwen3}:2:2",
               f"{tiny_llama3_rope}:2:1"]
    return run_torchrun("sync_logprobs.py", 4, [arg for layout in layouts for arg in ("--layout", layout)])


@pytest.mark.parametrize("index,layout", [(0, "tp2pp1"), (1, "tp1pp2"), (2, "tp2pp2"), (3, "tp2pp2"), (4, "tp2pp1")],
                         ids=["llama-tp2-dp2", "llama-pp2-dp2", "qwen2-tp2pp2", "qwen3-tp2pp2", "llama3_rope-tp2-dp2"])
@pytest.mark.parametrize("transport", ["collective", "shared_memory", "direct"])
def test_engine_logprobs_equal_trainer_after_sync(synced_layouts, index, layout, transport):
    per_rank = [rank_results[index] for rank_results in synced_layouts]
    assert per_rank[0]["layout"] == layout
    last_stage = [r for r in per_rank if r["is_last_stage"]]
    assert len(last_stage) == 4 // (2 if layout.endswith("pp2") else 1)
    for r in last_stage:
        got = r[transport]
        assert got["stale_diff"] > 1e-2, "before the sync the engine should hold older weights"
        assert got["synced_diff"] <= TOL, f"engine vs trainer log-probs differ by {got['synced_diff']}"
    if transport == "direct":  # written in place: nothing is bucketed
        assert per_rank[0][transport]["buckets"] == 0
    else:  # the worker's bucket size gives both packed buckets and lone tensors
        assert 0 < per_rank[0][transport]["solo_buckets"] < per_rank[0][transport]["buckets"]


@pytest.fixture(scope="module")
def vocab_heavy_llama(tmp_path_factory) -> str:
    """~5 MB, the embedding (2 MB) the largest tensor, as in real LLMs."""
    import make_tiny_model

    out = tmp_path_factory.mktemp("sync_mem") / "model"
    make_tiny_model.main(["--arch", "llama", "--out-dir", str(out), "--hidden", "128", "--layers", "4",
                          "--vocab", "4096"])
    return str(out)


@pytest.mark.parametrize("tp", [1, 2])
def test_sync_peak_memory_within_one_bucket_plus_largest_tensor(vocab_heavy_llama, monkeypatch, tp):
    """Both transports, every rank: resident high-water mark from building the WeightSync to the end
    of its sync (see bench/workers/sync_measure.py). At TP2 the collective transport gathers the TP
    parts of the vocab-parallel embedding (the largest tensor) straight into place."""
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # tensors are mmapped, and unmapped on free
    per_rank = run_torchrun(str(SYNC_MEASURE), tp, ["--hf-dir", vocab_heavy_llama, "--tp", tp,
                                                    "--bucket-mb", "0.25", "1"])
    for result in per_rank:
        assert {s["transport"] for s in result["syncs"]} == {"collective", "shared_memory", "direct"}
        for s in result["syncs"]:
            bound = s["bucket_mb"] * MB + s["largest_tensor_bytes"]
            assert s["bytes"] > bound + RSS_ALLOWANCE, "model too small for the bound to mean anything"
            assert s["peak_extra_bytes"] <= bound + RSS_ALLOWANCE, (
                f"rank {result['rank']}, {s['transport']}, bucket {s['bucket_mb']} MB: peak extra "
                f"{s['peak_extra_bytes'] / MB:.2f} MB > bucket + largest tensor {bound / MB:.2f} MB")
