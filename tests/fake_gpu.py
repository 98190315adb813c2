"""A fake GPU that computes: CUDA's device rule on a CPU-only torch, with real values.

torch's FakeTensorMode raises CUDA's device-mismatch errors but holds no values, so the first
`.item()` of a train step (a finite check, a metric) stops it; and a CPU-only torch has no CUDA
device guard, which autograd and indexing need for any tensor that reports device cuda. So the
fake GPU is the `meta` device (it has a no-op guard), and every tensor on it wraps a real CPU
tensor: ops run on the CPU data, and an op that mixes a fake-GPU tensor with a CPU tensor of more
than zero dimensions raises the error CUDA raises (zero-dim CPU tensors are scalars to CUDA, and
index tensors may stay on the host). While `FakeGpu()` is active, factories and moves given a cuda
(or meta) device make fake-GPU tensors, and `.cpu()` / `.to("cpu")` bring real ones back.

    with FakeGpu():
        x = torch.ones(3, device="cuda")    # FakeGpuTensor, x.device == meta
        x + torch.ones(3)                   # RuntimeError: Expected all tensors to be on the same device
"""
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

GPU = torch.device("meta")
CPU = torch.device("cpu")
aten = torch.ops.aten
# Ops that legitimately take tensors of two devices (copies between them, reading a scalar out).
CROSS_DEVICE = {aten._to_copy.default, aten.copy_.default, aten._local_scalar_dense.default,
                aten.lift_fresh.default}
# Indexing takes index tensors on the host for a tensor on any device.
INDEX_OPS = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default}


class FakeGpuTensor(torch.Tensor):
    """Reports the fake GPU (meta) as its device; its values live in `elem`, a CPU tensor."""

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype,
            device=GPU, requires_grad=elem.requires_grad)

    def __init__(self, elem: torch.Tensor):
        self.elem = elem

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __repr__(self):
        return f"FakeGpuTensor({self.elem!r})"

    def tolist(self):  # torch refuses it for subclasses; a GPU copies to the host
        return self.elem.tolist()

    @property
    def data(self):
        return torch.Tensor.data.__get__(self)

    @data.setter
    def data(self, value):  # megatron swaps tensors' data (make_viewless_tensor): keep elem in step
        torch.Tensor.data.__set__(self, value)
        self.elem = host_data(value)

    def type(self, *args, **kwargs):
        """What a CUDA tensor reports (megatron checks these strings)."""
        if args or kwargs:
            return super().type(*args, **kwargs)
        return self.elem.type().replace("torch.", "torch.cuda.", 1)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        with FakeGpu():
            return func(*args, **(kwargs or {}))


def on_fake_gpu(t: torch.Tensor) -> bool:
    return isinstance(t, FakeGpuTensor)


def host_data(t: torch.Tensor) -> torch.Tensor:
    """The CPU tensor holding a fake-GPU tensor's values (the tensor itself if it is on the host)."""
    return t.elem if isinstance(t, FakeGpuTensor) else t


def to_fake_gpu(t: torch.Tensor) -> torch.Tensor:
    """A fake-GPU tensor aliasing `t`'s CPU data (parameters stay parameters); for Module._apply."""
    if isinstance(t, FakeGpuTensor):
        return t
    fake = FakeGpuTensor(t.detach())
    return torch.nn.Parameter(fake, t.requires_grad) if isinstance(t, torch.nn.Parameter) else fake


def _check_same_device(func, args, kwargs) -> None:
    if func in INDEX_OPS:
        args = (args[0], *args[2:])
    tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    devices = {"cuda:0 (fake)" if on_fake_gpu(t) else str(t.device) for t in tensors
               if not (t.device.type == "cpu" and t.dim() == 0)}
    if len(devices) > 1:
        raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                           f"{' and '.join(sorted(devices))}! (in {func})")


def _is_gpu(device) -> bool:
    return device is not None and torch.device(device).type in ("cuda", "meta")


def host_then_device(make):
    """`torch.tensor`/`torch.as_tensor` of Python data set a CUDA device guard first: build on the
    host, then move (what they do on a GPU anyway)."""
    def made_on_host(data, *args, device=None, **kwargs):
        data = tree_map(host_data, data)  # a list of GPU scalars is read to the host first
        if _is_gpu(device):
            return make(data, *args, **kwargs).to(GPU)
        return make(data, *args, device=device, **kwargs)
    return made_on_host


class FakeGpu(TorchDispatchMode):
    """While active, GPU tensors are FakeGpuTensors and CUDA's device rule is enforced.

    A CPU-only torch initialises CUDA before a factory given a cuda device reaches any mode,
    `torch.cuda.current_device()` fails, and `torch.tensor(data, device="cuda")` sets a CUDA device
    guard: all three are stood in for while the mode is active."""

    def __enter__(self):
        self._saved = torch.cuda._lazy_init, torch.cuda.current_device, torch.tensor, torch.as_tensor
        torch.cuda._lazy_init, torch.cuda.current_device = (lambda: None), (lambda: 0)
        torch.tensor, torch.as_tensor = host_then_device(torch.tensor), host_then_device(torch.as_tensor)
        return super().__enter__()

    def __exit__(self, *exc):
        torch.cuda._lazy_init, torch.cuda.current_device, torch.tensor, torch.as_tensor = self._saved
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func not in CROSS_DEVICE:
            _check_same_device(func, args, kwargs)
        device = kwargs.get("device")
        inputs_on_gpu = any(on_fake_gpu(t) for t in tree_flatten((args, kwargs))[0])
        out_on_gpu = _is_gpu(device) if "device" in kwargs else inputs_on_gpu
        if _is_gpu(device):
            kwargs["device"] = CPU
        out = func(*tree_map(host_data, args), **tree_map(host_data, kwargs))
        # An op that returns one of its inputs (in place, out=) returns the caller's tensor.
        inputs = {id(t.elem): t for t in tree_flatten((args, kwargs))[0] if on_fake_gpu(t)}
        return tree_map(lambda t: _as_output(t, inputs, out_on_gpu), out)


def _as_output(t, inputs: dict, on_gpu: bool):
    if not isinstance(t, torch.Tensor):
        return t
    if id(t) in inputs:
        return inputs[id(t)]
    return FakeGpuTensor(t) if on_gpu else t
