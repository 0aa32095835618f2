"""scangraph.distributed, on torch.distributed (NCCL on GPUs, gloo on CPUs): one long sequence
split along L over the ranks of a process group (context parallelism for the selective scan
and prefix attention), and a graph's rows partitioned over them (PartitionedGraph, whose
halo_exchange the sparse ops call). docs/distributed.md describes both, their traffic and limits."""
from scangraph.distributed.context_parallel import prefix_attention, selective_scan
from scangraph.distributed.partition import PartitionedGraph, halo_exchange

__all__ = ["PartitionedGraph", "halo_exchange", "prefix_attention", "selective_scan"]
