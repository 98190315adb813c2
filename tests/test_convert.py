"""HF <-> megatron distributed checkpoints: conversion tools, resharding on load, round trips, errors.

Launch budget (each torchrun costs tens of seconds here): the CLI converts Qwen2 at TP2 x PP2 as
a single command; one 4-rank worker converts Llama at four layouts and checks every checkpoint's
logits against HF at its own and resharded layouts; the export and compare CLIs run once per need.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import compare_logits
import convert_hf_to_megatron
import convert_megatron_to_hf
from dist_harness import REPO_ROOT, run_torchrun
from superrl.config import ConfigError
from superrl.weights.checkpoint_manifest import CheckpointError
from superrl.weights.hf_safetensors import HFCheckpointReader
from superrl.weights.megatron_checkpoint import HF_FILES_DIR, read_checkpoint_metadata

TOL = 1e-5


def run_tool(script: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "tools" / script), *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=600)


def check_ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def copy_model(src: str, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def edit_weights(hf_dir: str, edit) -> None:
    path = os.path.join(hf_dir, "model.safetensors")
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def edit_config(hf_dir: str, **changes) -> None:
    path = os.path.join(hf_dir, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)


@pytest.fixture(scope="module")
def qwen_ckpt(tiny_qwen2, tmp_path_factory) -> str:
    """Written by the CLI as one command: it launches its own 4 ranks."""
    out = tmp_path_factory.mktemp("qwen_ckpt") / "tp2pp2"
    check_ok(run_tool("convert_hf_to_megatron.py", "--hf-dir", tiny_qwen2, "--out-dir", out, "--tp", 2, "--pp", 2))
    return str(out)


@pytest.fixture(scope="module")
def layouts(tiny_llama, tiny_qwen2, qwen_ckpt, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("layouts")
    perturbed = copy_model(tiny_llama, work / "llama_perturbed")
    edit_weights(perturbed, lambda t: t["model.layers.1.mlp.down_proj.weight"].mul_(1.5))
    result = run_torchrun("convert_layouts.py", 4, [
        "--llama", tiny_llama, "--llama-perturbed", perturbed, "--qwen", tiny_qwen2, "--qwen-ckpt", qwen_ckpt,
        "--work-dir", work])[0]
    return {**result, "work": work}


def test_logits_match_hf_at_every_layout(layouts):
    assert len(layouts["hf_diff"]) == 8
    for case, diff in layouts["hf_diff"].items():
        assert diff <= TOL, f"{case}: max |megatron - HF| = {diff}"


def test_resharded_load_gives_the_same_logits(layouts):
    """TP2xPP1 loaded at TP1xPP2, and TP1xPP2 loaded at TP2xPP1, vs each loaded at its own layout."""
    assert set(layouts["reshard_diff"]) == {"llama_tp2pp1@tp1pp2", "llama_tp1pp2@tp2pp1"}
    for case, diff in layouts["reshard_diff"].items():
        assert diff <= TOL, f"{case}: {diff}"


def test_compare_detects_different_weights(layouts):
    assert layouts["perturbed_diff"] > 1e-3


def test_checkpoint_from_another_model_is_rejected_by_name(layouts):
    message = layouts["other_model_error"]
    assert message and "different model" in message
    assert "name: 'LlamaForCausalLM' in the checkpoint, 'Qwen2ForCausalLM' here" in message
    assert "qkv_bias: False in the checkpoint, True here" in message


def test_checkpoints_record_layout_and_carry_tokenizer(layouts, qwen_ckpt):
    for tp, pp in [(1, 1), (2, 1), (1, 2), (2, 2)]:
        metadata = read_checkpoint_metadata(str(layouts["work"] / f"llama_tp{tp}pp{pp}"))
        assert (metadata["tp"], metadata["pp"], metadata["padded_vocab"]) == (tp, pp, 512)
    metadata = read_checkpoint_metadata(qwen_ckpt)
    assert (metadata["tp"], metadata["pp"], metadata["hf_dtype"]) == (2, 2, "float32")
    AutoTokenizer.from_pretrained(os.path.join(qwen_ckpt, HF_FILES_DIR))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_round_trip_is_bit_exact(request, layouts, qwen_ckpt, tmp_path, arch):
    """HF -> megatron TP2xPP2 -> HF reproduces every tensor; Llama's export is split into shards."""
    hf_dir = request.getfixturevalue(f"tiny_{arch}")
    ckpt = str(layouts["work"] / "llama_tp2pp2") if arch == "llama" else qwen_ckpt
    shard_mb = 0.1 if arch == "llama" else 2048
    check_ok(run_tool("convert_megatron_to_hf.py", "--megatron-dir", ckpt, "--out-dir", tmp_path,
                      "--max-shard-mb", shard_mb))
    original, exported = HFCheckpointReader(hf_dir), HFCheckpointReader(str(tmp_path))
    assert exported.names() == original.names()
    for name in original.names():
        a, b = original(name), exported(name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert (len(set(exported.file_of.values())) > 1) == (arch == "llama")
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert model.config.tie_word_embeddings == (arch == "llama")
    AutoTokenizer.from_pretrained(str(tmp_path))


def test_compare_logits_cli_reshards_to_one_process(tiny_qwen2, qwen_ckpt):
    out = check_ok(run_tool("compare_logits.py", "--hf-dir", tiny_qwen2, "--megatron-dir", qwen_ckpt))
    diff = float(re.search(r"max_abs_diff=(\S+)", out).group(1))
    assert diff <= TOL


def test_cli_reports_bad_input_as_a_message(tiny_llama, tmp_path):
    """The CLI entry turns a user error into `error: ...` and exit code 1 instead of a traceback."""
    hf_dir = copy_model(tiny_llama, tmp_path / "mistral")
    edit_config(hf_dir, architectures=["MistralForCausalLM"])
    with pytest.raises(SystemExit) as info:
        convert_hf_to_megatron.exit_on_user_error(
            lambda: convert_hf_to_megatron.main(["--hf-dir", hf_dir, "--out-dir", str(tmp_path / "out")]))
    assert str(info.value.code).startswith("error: ") and "'MistralForCausalLM' is not supported" in info.value.code


# ---- bad input, checked before any process group exists (in-process, no launch) ----------------

def _drop(name):
    return lambda t: t.pop(name)


def _add(name):
    return lambda t: t.__setitem__(name, torch.zeros(4))


def _reshape(name):
    return lambda t: t.__setitem__(name, t[name][:-1].clone())


@pytest.mark.parametrize("edit,error,message", [
    (_drop("model.layers.1.mlp.up_proj.weight"), CheckpointError, "missing tensor(s) model.layers.1.mlp.up_proj.weight"),
    (_add("model.layers.0.mlp.extra.weight"), CheckpointError, "unexpected tensor(s) model.layers.0.mlp.extra.weight"),
    (_reshape("model.layers.0.self_attn.k_proj.weight"), CheckpointError,
     "tensor 'model.layers.0.self_attn.k_proj.weight' has shape (31, 64), expected (32, 64)"),
], ids=["missing", "unexpected", "shape"])
def test_bad_hf_tensors_are_named(tiny_qwen2, tmp_path, edit, error, message):
    hf_dir = copy_model(tiny_qwen2, tmp_path / "model")
    edit_weights(hf_dir, edit)
    with pytest.raises(error) as info:
        convert_hf_to_megatron.main(["--hf-dir", hf_dir, "--out-dir", str(tmp_path / "out"), "--tp", "2"])
    assert message in str(info.value)


@pytest.mark.parametrize("tp,pp,message", [
    (3, 1, "parallel.tp=3 does not divide num_attention_heads=4"),
    (1, 3, "parallel.pp=3 does not divide num_hidden_layers=2"),
])
def test_layout_not_dividing_the_model_is_named(tiny_llama, tmp_path, tp, pp, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        convert_hf_to_megatron.main(["--hf-dir", tiny_llama, "--out-dir", str(tmp_path), "--tp", str(tp),
                                     "--pp", str(pp)])


def test_compare_logits_rejects_checkpoint_of_another_model(tiny_llama, qwen_ckpt):
    with pytest.raises(CheckpointError, match="is from a different model.*name: 'Qwen2ForCausalLM' in the checkpoint"):
        compare_logits.main(["--hf-dir", tiny_llama, "--megatron-dir", qwen_ckpt])


def test_directory_without_metadata_is_not_a_checkpoint(tiny_llama):
    with pytest.raises(CheckpointError, match="is not a complete SuperRL megatron checkpoint"):
        convert_megatron_to_hf.main(["--megatron-dir", tiny_llama, "--out-dir", "unused"])


def test_an_in_process_conversion_leaves_no_world_behind(tiny_llama, tmp_path, monkeypatch):
    """Run in-process (as tests and notebooks do), a tool's world of one takes its RANK/MASTER_PORT
    back: left behind, they made every later `python -m superrl.train` bind the same stale port."""
    world = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    for key in world:
        monkeypatch.delenv(key, raising=False)
    convert_hf_to_megatron.main(["--hf-dir", tiny_llama, "--out-dir", str(tmp_path / "out")])
    assert (tmp_path / "out" / "superrl_checkpoint.json").is_file()
    assert [key for key in world if key in os.environ] == []
