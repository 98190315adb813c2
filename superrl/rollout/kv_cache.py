"""Preallocated key/value cache: one row ("slot") per running sequence, reused across requests."""
import torch

from superrl.rollout.hf_checkpoint import DecoderConfig


class KVCache:
    """keys/values: [layers, slots, kv_heads, capacity, head_dim].

    The slot axis is outermost after layers, so the live rows [0, n) of a layer are a plain view
    (no gather) and attention reads them directly.
    """

    def __init__(self, cfg: DecoderConfig, slots: int, capacity: int, dtype, device):
        shape = (cfg.num_layers, slots, cfg.num_kv_heads, capacity, cfg.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def slots(self) -> int:
        return self.keys.shape[1]

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def move(self, sources: list, destinations: list) -> None:
        """Copy whole slots (all layers), used to compact running sequences into low rows."""
        src = torch.tensor(sources, device=self.keys.device)
        dst = torch.tensor(destinations, device=self.keys.device)
        self.keys[:, dst] = self.keys[:, src]
        self.values[:, dst] = self.values[:, src]
