"""scangraph.distributed: one long sequence split along L over the ranks of a process group
(context parallelism for the selective scan and prefix attention), on torch.distributed (NCCL on
GPUs, gloo on CPUs). docs/distributed.md describes the scheme, its traffic and its limits."""
from scangraph.distributed.context_parallel import prefix_attention, selective_scan

__all__ = ["prefix_attention", "selective_scan"]
