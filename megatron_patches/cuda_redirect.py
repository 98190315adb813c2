"""Patch 2: megatron-core's ~175 `torch.cuda.current_device()` calls and ~95 `"cuda"` literals.

Instead of touching the global `torch`, every `megatron.*` module gets its own `torch` name bound
to a thin proxy: attribute access falls through to the real torch, except that `torch.cuda` is
a CPU stand-in (current device = cpu, synchronize/streams/events are no-ops, RNG = CPU RNG) and
tensor factories map a CUDA device argument to the CPU. Code outside megatron is unaffected.
"""
import contextlib
import importlib.abc
import sys
import types

import torch

CPU = torch.device("cpu")
_FACTORIES = ("empty", "zeros", "ones", "full", "tensor", "as_tensor", "arange", "rand", "randn",
              "randint", "randperm", "empty_like", "zeros_like", "ones_like", "full_like", "eye",
              "linspace", "empty_strided")


def _is_cuda_device(device) -> bool:
    if isinstance(device, int):
        return True  # megatron passes torch.cuda.current_device() ints as devices
    return device is not None and torch.device(device).type == "cuda"


def _cpu_if_cuda(device):
    return CPU if _is_cuda_device(device) else device


def _redirect_factory(factory):
    def factory_on_cpu(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu_if_cuda(kwargs["device"])
        kwargs.pop("pin_memory", None)  # pinning needs an accelerator
        return factory(*args, **kwargs)

    factory_on_cpu.__name__ = factory.__name__
    return factory_on_cpu


def _device(*args, **kwargs):
    if args and isinstance(args[0], str) and args[0].startswith("cuda"):
        return CPU
    return torch.device(*args, **kwargs)


class _NoOpStream:
    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args):
        pass

    def wait_event(self, *args):
        pass

    def record_event(self, *args):
        return _NoOpEvent()

    def synchronize(self):
        pass


class _NoOpEvent(_NoOpStream):
    def record(self, *args):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


class _CpuCuda(types.ModuleType):
    """What megatron sees as `torch.cuda`."""

    Stream = _NoOpStream
    Event = _NoOpEvent

    def __getattr__(self, name):
        return getattr(torch.cuda, name)

    @staticmethod
    def current_device():
        return CPU

    @staticmethod
    def current_stream(*args, **kwargs):
        return _NoOpStream()

    default_stream = current_stream

    @staticmethod
    def stream(*args, **kwargs):
        return contextlib.nullcontext()

    @staticmethod
    def synchronize(*args, **kwargs):
        pass

    @staticmethod
    def set_device(*args, **kwargs):
        pass

    @staticmethod
    def device_count():
        return 0

    @staticmethod
    def memory_allocated(*args, **kwargs):
        return 0

    max_memory_allocated = memory_reserved = max_memory_reserved = memory_allocated

    @staticmethod
    def empty_cache():
        pass

    # The "device" RNG on a CPU run is the CPU generator.
    get_rng_state = staticmethod(lambda *a, **k: torch.get_rng_state())
    set_rng_state = staticmethod(lambda state, *a, **k: torch.set_rng_state(state))
    manual_seed = staticmethod(lambda seed: torch.manual_seed(seed))


class _TorchOnCpu(types.ModuleType):
    """What megatron sees as `torch`."""

    def __init__(self):
        super().__init__("torch")
        self.cuda = _CpuCuda("torch.cuda")
        self.device = _device
        for name in _FACTORIES:
            setattr(self, name, _redirect_factory(getattr(torch, name)))

    def __getattr__(self, name):
        return getattr(torch, name)


TORCH_ON_CPU = _TorchOnCpu()


def _rebind(module) -> None:
    if getattr(module, "torch", None) is torch and module.__name__.startswith("megatron."):
        module.torch = TORCH_ON_CPU


class _RebindAfterImport(importlib.abc.MetaPathFinder):
    """Megatron imports many submodules lazily; rebind their `torch` as they load."""

    def find_spec(self, fullname, path, target=None):
        if not fullname.startswith("megatron."):
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = getattr(finder, "find_spec", lambda *a: None)(fullname, path, target)
            if spec is not None and spec.loader is not None:
                exec_module = spec.loader.exec_module

                def exec_and_rebind(module, _exec=exec_module):
                    _exec(module)
                    _rebind(module)

                spec.loader.exec_module = exec_and_rebind
                return spec
        return None


def apply() -> None:
    if not any(isinstance(f, _RebindAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RebindAfterImport())
    for module in list(sys.modules.values()):
        if module is not None and getattr(module, "__name__", "").startswith("megatron."):
            _rebind(module)
