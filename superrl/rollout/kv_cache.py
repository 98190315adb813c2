"""Preallocated key/value cache: one row ("slot") per running sequence, reused across requests."""
import torch

from superrl.hf_config import ModelArch


class KVCache:
    """data: [layers, 2 (keys, values), slots, kv_heads, capacity, head_dim], allocated once.

    Keys and values of one layer share a buffer so that a step writes both with ONE `index_copy_`
    (see `write_index`). The slot axis comes right after keys/values, so the live rows [0, n) of a
    layer are a plain view (no gather) whose (slot, head) axes merge into one batch axis for bmm.
    """

    def __init__(self, cfg: ModelArch, slots: int, capacity: int, dtype, device):
        shape = (cfg.num_layers, 2, slots, cfg.num_kv_heads, capacity, cfg.head_dim)
        self.data = torch.zeros(shape, dtype=dtype, device=device)
        heads = torch.arange(2 * cfg.num_kv_heads, device=device)  # (k|v, head) pairs in qkv order
        kv, head = heads // cfg.num_kv_heads, heads % cfg.num_kv_heads
        self._head_offset = (kv * slots * cfg.num_kv_heads + head) * capacity  # row offset of each pair
        self._slot_rows = cfg.num_kv_heads * capacity  # rows of one slot within a k or v half
        # Per-layer views made once: a decode step would otherwise re-slice them layer by layer.
        self.keys = [layer[0] for layer in self.data]  # each [slots, kv_heads, capacity, head_dim]
        self.values = [layer[1] for layer in self.data]
        self._rows = [layer.view(-1, cfg.head_dim) for layer in self.data]  # write targets

    @property
    def slots(self) -> int:
        return self.data.shape[2]

    @property
    def capacity(self) -> int:
        return self.data.shape[4]

    def write_index(self, slots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Flat row index [N * 2 * kv_heads] into a layer's data viewed as [-1, head_dim] for N
        tokens (cache slot and position each), ordered like the tokens' k heads then v heads.

        Computed once per forward and shared by all layers."""
        return (slots[:, None] * self._slot_rows + positions[:, None] + self._head_offset).flatten()

    def write(self, layer: int, index: torch.Tensor, keys_values: torch.Tensor) -> None:
        """keys_values [N, 2 * kv_heads, head_dim] (k heads, then v heads) -> their cache entries."""
        self._rows[layer].index_copy_(0, index, keys_values.flatten(0, 1))

    def move(self, sources: list, destinations: list) -> None:
        """Copy whole slots (all layers), used to compact running sequences into low rows."""
        src = torch.tensor(sources, device=self.data.device)
        dst = torch.tensor(destinations, device=self.data.device)
        self.data[:, :, dst] = self.data[:, :, src]
