"""How the model runs a packed micro-batch (optim.max_tokens_per_micro_batch, docs/packing.md).

A packed micro-batch keeps its rows in the [rows, width] layout every loss indexes; its `Packing`
lays each row's own positions end to end in one [1, width] sequence, the padding after them as
one more segment. The model attends within segments only and restarts positions in each
(megatron's packed-sequence parameters), so every row sees exactly what it would see alone; the
outputs are cut back into the rows' layout before any loss reads them.
"""
import dataclasses
from dataclasses import dataclass

import torch
from megatron.core.packed_seq_params import PackedSeqParams


@dataclass(frozen=True)
class Packing:
    lengths: tuple  # each row's own positions, in the micro-batch's row order
    width: int  # positions of the packed sequence: sum(lengths), more when padded to one shape

    def padded(self, multiple: int) -> "Packing":
        """The packing widened to a multiple of `multiple` positions (sequence parallelism)."""
        return dataclasses.replace(self, width=self.width + -self.width % multiple)

    def segments(self) -> list:
        tail = self.width - sum(self.lengths)
        return list(self.lengths) + ([tail] if tail else [])

    def pack(self, rows: torch.Tensor, fill) -> torch.Tensor:
        """[rows, s] -> [1, width]: each row's own positions in order, `fill` after them."""
        index, inside = self._row_positions(rows.shape[1], rows.device)
        packed = rows.new_full((self.width,), fill)
        packed[index[inside]] = rows[inside]
        return packed.unsqueeze(0)

    def unpack(self, packed: torch.Tensor, row_width: int) -> torch.Tensor:
        """[1, width] -> [rows, row_width], zero past each row's end (differentiable)."""
        index, inside = self._row_positions(row_width, packed.device)
        return torch.where(inside, packed[0, index], packed.new_zeros(()))

    def position_ids(self, device) -> torch.Tensor:
        return torch.cat([torch.arange(n, device=device) for n in self.segments()]).unsqueeze(0)

    def seq_params(self, device) -> PackedSeqParams:
        """Megatron's packed-sequence ('thd') parameters: one segment per row, and the padding."""
        segments = self.segments()
        cu_seqlens = torch.tensor([0, *segments], dtype=torch.int32, device=device).cumsum(0, dtype=torch.int32)
        longest = max(segments)
        return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                               max_seqlen_q=longest, max_seqlen_kv=longest)

    def _row_positions(self, row_width: int, device) -> tuple:
        """[rows, row_width] packed position of each row position, and whether it is the row's own."""
        lengths = torch.tensor(self.lengths, device=device)
        offsets = lengths.cumsum(0) - lengths
        column = torch.arange(row_width, device=device)
        inside = column < lengths[:, None]
        return torch.where(inside, offsets[:, None] + column, 0), inside
