"""Data-parallel training with torch.distributed (gloo, 2 CPU processes): one DDP step of a 2-layer
GCN (scangraph.nn.GCNConv) and one of scangraph.nn.GraphMamba equals the single-process step on
the whole global batch.

Each rank runs the full-graph forward and takes the loss over its half of the labelled nodes; DDP
averages the two gradients, which for equal halves is the gradient of the mean loss over the
global batch. The ops' backward passes are deterministic and hold no cross-process state, so the
parameters after the step agree with single-process training to fp32 rounding.
GraphMamba samples random walks: in eval mode it draws one fixed sample per graph (eval_seed), the
same in every process, and with dropout 0 eval mode only changes the sampling."""
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import scangraph

NODES, FEATURES, CLASSES, LABELLED = 48, 8, 3, 24
LR = 0.5


def _data():
    g = torch.Generator().manual_seed(1234)
    edges = torch.randint(0, NODES, (2, 160), generator=g)
    x = torch.randn(NODES, FEATURES, generator=g)
    y = torch.randint(0, CLASSES, (NODES,), generator=g)
    labelled = torch.randperm(NODES, generator=g)[:LABELLED]
    return edges, x, y, labelled


class GCN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = scangraph.nn.GCNConv(FEATURES, 16)
        self.conv2 = scangraph.nn.GCNConv(16, CLASSES)

    def forward(self, x, edge_index):
        return self.conv2(F.relu(self.conv1(x, edge_index)), edge_index)


def _models():
    """Both models with fixed initial parameters (the same in every process)."""
    torch.manual_seed(0)
    gcn = GCN()
    torch.manual_seed(1)
    mamba = scangraph.nn.GraphMamba(FEATURES, 16, CLASSES, walk_length=2, num_walks=2, d_state=4, dropout=0.0,
                                    eval_seed=7)
    mamba.eval()  # one fixed walk sample per graph, identical in every process
    return {"gcn": gcn, "graph_mamba": mamba}


def _step(model, nodes, wrap=None):
    """One SGD step on the cross-entropy over `nodes`; returns the parameters after it."""
    edges, x, y, _ = _data()
    trained = model if wrap is None else wrap(model)
    optimizer = torch.optim.SGD(trained.parameters(), lr=LR)
    optimizer.zero_grad()
    out = trained(x, edges)
    F.cross_entropy(out[nodes], y[nodes]).backward()
    optimizer.step()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _worker(rank, world, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two processes on two cores
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        labelled = _data()[3]
        mine = labelled.chunk(world)[rank]  # this rank's half of the global batch
        results = {}
        for name, model in _models().items():
            results[name] = _step(model, mine, wrap=lambda m: torch.nn.parallel.DistributedDataParallel(m))
        if rank == 0:
            torch.save(results, path)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_ddp_step_equals_single_process_step():
    world = 2
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "ddp.pt")
        mp.spawn(_worker, args=(world, _free_port(), path), nprocs=world, join=True)
        ddp = torch.load(path)
    labelled = _data()[3]
    for name, model in _models().items():
        initial = {n: p.detach().clone() for n, p in model.named_parameters()}
        single = _step(model, labelled)
        assert single.keys() == ddp[name].keys()
        moved = 0
        for param, want in single.items():
            torch.testing.assert_close(ddp[name][param], want, rtol=1e-6, atol=1e-7, msg=f"{name}.{param}")
            moved += int(not torch.equal(want, initial[param]))
        # The step changed (almost) every parameter: the comparison is not of untouched values.
        assert moved >= len(single) - 2, f"{name}: only {moved} of {len(single)} parameters moved"
