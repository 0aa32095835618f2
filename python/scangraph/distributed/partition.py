"""A graph's rows (destination nodes) partitioned over the ranks of a process group, for
full-graph message passing that does not fit one device (docs/distributed.md).

Every rank builds the same PartitionedGraph from the whole graph structure (cheap next to the
features) and holds the features of the nodes it owns. Its local graph has its owned rows, and
columns numbered owned nodes first, then its halo: the remote nodes its rows read, ordered by
owner rank, then node id. halo_exchange gathers the halo's features with one variable-size
all_to_all_single; its backward sends the halo's gradients back to their owners, which add
them in a fixed order (sending rank, then position) with scangraph's deterministic spmm.
"""
from typing import List, Optional, Union

import torch
import torch.distributed as dist

from scangraph.graph import CSRGraph


def contiguous_parts(num_nodes: int, parts: int, device) -> torch.Tensor:
    """Balanced contiguous split: node i to part floor(i * parts / num_nodes)."""
    return torch.arange(num_nodes, device=device) * parts // max(num_nodes, 1)


def metis_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("pymetis") is not None


def metis_parts(graph: CSRGraph, parts: int) -> Optional[torch.Tensor]:
    """METIS's partition through pymetis (an optional extra), or None when it is not installed."""
    try:
        import pymetis
    except ImportError:
        return None
    src, dst = graph.col.to(torch.int64).cpu(), graph.edge_rows().cpu()
    both = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)
    both = both[:, both[0] != both[1]]
    sym = CSRGraph.from_edge_index(torch.unique(both, dim=1), num_nodes=graph.num_rows)
    _, membership = pymetis.part_graph(parts, xadj=sym.rowptr.tolist(), adjncy=sym.col.tolist())
    return torch.tensor(membership, dtype=torch.int64, device=graph.device)


class PartitionedGraph:
    """This rank's share of a square CSRGraph whose rows are split over `group`'s ranks.

    Attributes: local (CSRGraph: owned rows x (owned + halo) columns, edge order = the rows'
    CSR order), owned and halo (global node ids), edge_ids (the caller's edge order position of
    every local edge, for per-edge tensors), send_index / send_counts / recv_counts (the
    exchange's maps), parts (the node-to-rank map), rank, world, group, bytes_sent."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    @property
    def num_owned(self) -> int:
        return self.owned.numel()

    @classmethod
    def build(cls, graph: CSRGraph, parts: Union[int, torch.Tensor], rank: Optional[int] = None,
              group=None) -> "PartitionedGraph":
        """parts: a (num_nodes,) node-to-rank tensor, or the number of parts (the group's size),
        split with METIS when pymetis is installed and contiguously otherwise. Every rank must
        pass the same graph and partition (checked: a mismatch raises on every rank)."""
        op = "PartitionedGraph.build"
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(f"{op}: torch.distributed is not initialized; call init_process_group first")
        if not isinstance(graph, CSRGraph) or graph.num_rows != graph.num_cols:
            raise TypeError(f"{op}: graph must be a square CSRGraph (nodes x nodes)")
        world = dist.get_world_size(group)
        rank = dist.get_rank(group) if rank is None else int(rank)
        if rank != dist.get_rank(group):
            raise ValueError(f"{op}: rank {rank} is not this process's rank in the group ({dist.get_rank(group)})")
        n = graph.num_rows
        if isinstance(parts, int):
            if parts != world:
                raise ValueError(f"{op}: {parts} parts for a process group of {world} ranks; one part per rank")
            owner = metis_parts(graph, parts)
            owner = contiguous_parts(n, parts, graph.device) if owner is None else owner
        else:
            if not isinstance(parts, torch.Tensor) or parts.dim() != 1 or parts.numel() != n:
                raise ValueError(f"{op}: parts must be a ({n},) node-to-rank tensor (one entry per node), got "
                                 f"{tuple(getattr(parts, 'shape', ()))}")
            owner = parts.to(device=graph.device, dtype=torch.int64)
            if n and (int(owner.min()) < 0 or int(owner.max()) >= world):
                raise ValueError(f"{op}: parts holds ranks in [{int(owner.min())}, {int(owner.max())}], but the "
                                 f"process group has {world} ranks")
        _check_same_partition(op, graph, owner, world, group)
        return cls._assemble(graph, owner, rank, world, group, [0])

    @classmethod
    def _assemble(cls, graph, owner, rank, world, group, traffic):
        n, device = graph.num_rows, graph.device
        src, dst = graph.col.to(torch.int64), graph.edge_rows()
        # The halo of every rank s: the sources of its rows' edges owned elsewhere, as (s, source)
        # pairs, sorted by (s, owner, source): what s receives, from whom, in which order.
        cross = owner[src] != owner[dst]
        key = (owner[dst[cross]] * world + owner[src[cross]]) * n + src[cross]
        key = torch.unique(key)  # sorted
        needer, source = key // (world * n), key % n
        mine = needer == rank
        halo = source[mine]
        recv_counts = torch.bincount(owner[halo], minlength=world).tolist()
        to_send = owner[source] == rank
        sent = source[to_send]  # grouped by needer, then ascending id: each receiver's order
        send_counts = torch.bincount(needer[to_send], minlength=world).tolist()
        owned = torch.nonzero(owner == rank).flatten()
        local_id = torch.full((n,), -1, dtype=torch.int64, device=device)
        local_id[owned] = torch.arange(owned.numel(), device=device)
        local_id[halo] = owned.numel() + torch.arange(halo.numel(), device=device)
        # The owned rows' edges, in the rows' CSR order.
        counts = graph.in_degree()[owned]
        starts = graph.rowptr[owned]
        total = int(counts.sum()) if counts.numel() else 0
        first = torch.cumsum(counts, 0) - counts
        edges = torch.repeat_interleave(starts - first, counts, output_size=total) + torch.arange(total, device=device)
        rowptr = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), torch.cumsum(counts, 0)])
        weight = None if graph.edge_weight is None else graph.edge_weight[edges]
        local = CSRGraph(rowptr, local_id[src[edges]], weight, num_cols=owned.numel() + halo.numel(), validate=False)
        edge_ids = graph.edge_ids[edges] if graph.edge_ids is not None else edges
        send_index = local_id[sent]
        # The backward adds the returned halo gradients into their owned rows: a CSR from owned
        # rows to positions of the returned buffer, ascending (sending rank, then position).
        positions = torch.arange(send_index.numel(), device=device)
        order = torch.argsort(send_index * max(send_index.numel(), 1) + positions)
        back_rowptr = torch.searchsorted(send_index[order], torch.arange(owned.numel() + 1, device=device))
        returns = CSRGraph(back_rowptr, positions[order], num_cols=send_index.numel(), validate=False)
        return cls(graph=graph, local=local, owned=owned, halo=halo, edge_ids=edge_ids, send_index=send_index,
                   send_counts=send_counts, recv_counts=recv_counts, returns=returns, parts=owner,
                   num_nodes=n, rank=rank, world=world, group=group, _derived={}, _traffic=traffic)

    @property
    def bytes_sent(self) -> int:
        """Bytes this rank's exchanges have sent so far, forward and backward, over this graph
        and the graphs derived from it (a counter they share)."""
        return self._traffic[0]

    def repartition(self, graph: CSRGraph) -> "PartitionedGraph":
        """Another graph on the same nodes (self loops added, normalised weights) with this
        partition: what the layers derive from the whole graph, cut the same way on every rank."""
        if graph.num_rows != self.num_nodes or graph.num_cols != self.num_nodes:
            raise ValueError(f"repartition: the graph must have the partition's {self.num_nodes} nodes")
        return self._assemble(graph, self.parts, self.rank, self.world, self.group, self._traffic)

    def derived(self, key, build) -> "PartitionedGraph":
        """build(whole graph), partitioned the same way, built once per key (CSRGraph.derived's
        counterpart: the layers' self loops and normalisation, with the whole graph's degrees)."""
        if key not in self._derived:
            self._derived[key] = self.repartition(build(self.graph))
        return self._derived[key]

    def exchange(self, x: torch.Tensor) -> torch.Tensor:
        """(owned + halo, ...) features from this rank's (owned, ...) ones: halo_exchange."""
        return halo_exchange(x, self)

    def local_edge_tensor(self, per_edge: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """A per-edge tensor of the whole graph, in the caller's edge order, cut to this rank's
        edges in the local graph's order."""
        if per_edge is None:
            return None
        return per_edge[self.edge_ids]

    def __repr__(self) -> str:
        return (f"PartitionedGraph(rank={self.rank}/{self.world}, owned={self.num_owned}, halo={self.halo.numel()}, "
                f"edges={self.local.num_edges})")


def _check_same_partition(op, graph, owner, world, group):
    """Every rank must partition the same graph the same way: a checksum of both, gathered."""
    n = graph.num_rows
    weights = torch.arange(1, n + 1, dtype=torch.int64, device=owner.device)
    mine = torch.tensor([n, graph.num_edges, int((owner * weights).sum()) if n else 0,
                         int((graph.col.to(torch.int64) * 31 + graph.edge_rows()).sum()) if graph.num_edges else 0],
                        dtype=torch.int64)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    bad = [r for r, t in enumerate(every) if not torch.equal(t, every[0])]
    if bad:
        raise ValueError(f"{op}: the ranks disagree on the graph or its partition (rank(s) {bad} differ from rank 0); "
                         "every rank must pass the same graph and the same parts")


class _HaloExchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pg):
        ctx.pg = pg
        send = x[pg.send_index].contiguous()
        pg._traffic[0] += send.numel() * send.element_size()
        recv = x.new_empty((sum(pg.recv_counts),) + tuple(x.shape[1:]))
        dist.all_to_all_single(recv, send, output_split_sizes=pg.recv_counts, input_split_sizes=pg.send_counts,
                               group=pg.group)
        return torch.cat([x, recv])

    @staticmethod
    def backward(ctx, grad):
        from scangraph.ops.sparse import spmm

        pg = ctx.pg
        grad = grad.contiguous()
        owned, halo = grad[:pg.num_owned], grad[pg.num_owned:].contiguous()
        back = grad.new_empty((sum(pg.send_counts),) + tuple(grad.shape[1:]))
        pg._traffic[0] += halo.numel() * halo.element_size()
        dist.all_to_all_single(back, halo, output_split_sizes=pg.send_counts, input_split_sizes=pg.recv_counts,
                               group=pg.group)
        if back.shape[0] == 0 or owned.shape[0] == 0:
            return owned.clone(), None
        flat = back.reshape(back.shape[0], -1)
        returned = spmm(pg.returns, flat, "sum").reshape(owned.shape)
        return owned + returned, None


def halo_exchange(x: torch.Tensor, pg: PartitionedGraph) -> torch.Tensor:
    """(num_owned, ...) features of this rank's nodes -> (num_owned + num_halo, ...): its own rows,
    then the halo's, received from their owners. Differentiable; the backward is deterministic."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] != pg.num_owned:
        raise ValueError(f"halo_exchange: x must have one row per owned node ({pg.num_owned}) of rank {pg.rank}, got "
                         f"shape {tuple(getattr(x, 'shape', ()))}")
    backend = dist.get_backend(pg.group)
    if backend == "nccl" and x.device.type != "cuda":
        raise ValueError(f"halo_exchange: the group's backend is NCCL, which sends CUDA tensors; x is on {x.device}")
    if x.device != pg.local.device:
        raise ValueError(f"halo_exchange: x is on {x.device} but the partitioned graph on {pg.local.device}")
    return _HaloExchange.apply(x, pg)


__all__: List[str] = ["PartitionedGraph", "halo_exchange", "metis_available", "metis_parts"]
