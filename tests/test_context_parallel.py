"""Context-parallel scans (scangraph.distributed) on 2 and 4 gloo processes against one process
scanning the whole sequence: outputs, the final state and every gradient, slices of unequal
length (an empty one included), forward and reverse, packed sequences (cu_seqlens) crossing the
ranks' boundaries, a 64k-long sequence over 4 ranks, and the same bits when run again."""
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import scangraph
from scangraph.ops._rules import opmath_dtype

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

SLICED = ("u", "delta", "z")           # (batch, dim, L) inputs split along L
REPLICATED = ("A", "D", "delta_bias")  # parameters every rank holds


def _scan_inputs(seed, batch, dim, length, dstate, varying, dtype, cu=None):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    inputs = dict(u=rand(batch, dim, length), delta=rand(batch, dim, length, scale=0.5) - 1.0,
                  z=rand(batch, dim, length), A=-(torch.rand(dim, dstate, generator=g, dtype=torch.float64) + 0.2),
                  D=rand(dim), delta_bias=rand(dim, scale=0.3))
    if varying:
        inputs["B"], inputs["C"] = rand(batch, 1, dstate, length), rand(batch, 1, dstate, length)
    else:
        inputs["B"], inputs["C"] = rand(dim, dstate), rand(dim, dstate)
    inputs["A"] = inputs["A"].to(opmath_dtype(dtype))
    states = batch if cu is None else len(cu) - 1  # packed: one state per sequence
    inputs["initial_state"] = rand(states, dim, dstate).to(inputs["A"].dtype)
    grads = dict(out=rand(batch, dim, length), last=rand(states, dim, dstate).to(inputs["A"].dtype))
    return inputs, grads


def _scan_slice(inputs, lo, hi, rank, first, varying, packed=False):
    """This rank's arguments: its slice of the sequence, the replicated parameters, the initial
    state only on the rank the scan enters (packed sequences: on every rank)."""
    mine = {k: v[..., lo:hi].clone() for k, v in inputs.items() if k in SLICED}
    for name in ("B", "C"):
        mine[name] = inputs[name][..., lo:hi].clone() if varying else inputs[name].clone()
    for name in REPLICATED:
        mine[name] = inputs[name].clone()
    mine["initial_state"] = inputs["initial_state"].clone() if rank == first or packed else None
    return mine


def _run_scan(mine, grads, lo, hi, reverse, group=None, cu=None):
    leaves = {k: v.requires_grad_() for k, v in mine.items() if v is not None}
    kwargs = {k: v for k, v in mine.items() if k not in ("u", "delta", "A", "B", "C", "initial_state")}
    if cu is not None:
        kwargs["cu_seqlens"] = torch.tensor(cu, dtype=torch.int32)
    args = [mine[k] for k in ("u", "delta", "A", "B", "C")]
    if group is False:  # one process, the whole sequence
        out, last = scangraph.selective_scan(*args, **kwargs, delta_softplus=True, return_last_state=True,
                                             initial_state=mine["initial_state"], reverse=reverse)
    else:
        out, last = scangraph.distributed.selective_scan(*args, **kwargs, delta_softplus=True,
                                                         return_last_state=True,
                                                         initial_state=mine["initial_state"], reverse=reverse)
    loss = (out * grads["out"][..., lo:hi]).sum()
    if last is not None:
        loss = loss + (last * grads["last"]).sum()
    names = list(leaves)
    got = torch.autograd.grad(loss, [leaves[k] for k in names], allow_unused=True)
    return dict(out=out.detach(), last=None if last is None else last.detach(),
                grads={k: g for k, g in zip(names, got)})


def _attention_inputs(seed, batch, length, heads, d, dv, seqs=None):
    """q, k, v and an initial state per sequence (batch rows, or `seqs` packed sequences)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    rows = batch if seqs is None else seqs
    inputs = dict(q=r(heads, d), k=r(batch, length, heads, d) * 2, v=r(batch, length, heads, dv),
                  m0=r(rows, heads), c0=torch.rand(rows, heads, generator=g, dtype=torch.float64) + 0.5,
                  w0=r(rows, heads, dv))
    grads = dict(out=r(batch, length, heads, dv), m=r(rows, heads), c=r(rows, heads), w=r(rows, heads, dv))
    return inputs, grads


def _run_attention(inputs, grads, lo, hi, rank, world, distributed, cu=None):
    """Packed (cu): the initial states are every sequence's, on every rank; each rank's final
    states are those of the sequences it finishes (the empty state elsewhere)."""
    q = inputs["q"].clone().requires_grad_()
    k = inputs["k"][:, lo:hi].clone().requires_grad_()
    v = inputs["v"][:, lo:hi].clone().requires_grad_()
    leaves = dict(q=q, k=k, v=v)
    state = None
    if rank == 0 or cu is not None:
        state = tuple(inputs[n].clone().requires_grad_() for n in ("m0", "c0", "w0"))
        leaves.update(m0=state[0], c0=state[1], w0=state[2])
    run = scangraph.distributed.prefix_attention if distributed else scangraph.prefix_attention
    packing = {} if cu is None else {"cu_seqlens": torch.tensor(cu, dtype=torch.int32)}
    out, final = run(q, k, v, initial_state=state, return_state=True, **packing)
    loss = (out * grads["out"][:, lo:hi]).sum()
    if final is not None:
        # the final max m has no gradient of its own (the state is invariant to it): weight c, w
        loss = loss + (final[1] * grads["c"]).sum() + (final[2] * grads["w"]).sum()
    names = list(leaves)
    got = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    return dict(out=out.detach(), last=None if final is None else tuple(t.detach() for t in final),
                grads={n: g for n, g in zip(names, got)})


def _cases(world):
    """(name, bounds of the ranks' slices); world 4 has an empty slice. The packed cases' sequences
    cross the ranks' boundaries: one is empty, one a single position, one (world 4) runs through a
    whole slice and two more, and the last one, empty, sits at L."""
    scan_bounds = {2: [0, 37, 150], 4: [0, 37, 37, 100, 150]}[world]
    cases = [("scan-varying", dict(kind="scan", seed=1, shape=(2, 3, 150, 4), varying=True, reverse=False,
                                   dtype=torch.float64, bounds=scan_bounds)),
             ("scan-fixed-reverse", dict(kind="scan", seed=2, shape=(2, 3, 150, 4), varying=False, reverse=True,
                                         dtype=torch.float64, bounds=scan_bounds)),
             ("scan-packed", dict(kind="scan", seed=5, shape=(1, 3, 150, 4), varying=True, reverse=False,
                                  dtype=torch.float64, bounds=scan_bounds, cu=[0, 20, 20, 120, 121, 150, 150])),
             ("scan-packed-fixed-reverse", dict(kind="scan", seed=6, shape=(1, 3, 150, 4), varying=False,
                                                reverse=True, dtype=torch.float64, bounds=scan_bounds,
                                                cu=[0, 0, 30, 31, 140, 150])),
             ("attention", dict(kind="attention", seed=3, shape=(2, 90, 2, 4, 3),
                                bounds={2: [0, 50, 90], 4: [0, 20, 20, 61, 90]}[world])),
             ("attention-packed", dict(kind="attention", seed=7, shape=(1, 90, 2, 4, 3),
                                       bounds={2: [0, 50, 90], 4: [0, 20, 20, 61, 90]}[world],
                                       cu=[0, 10, 10, 65, 66, 90, 90]))]
    if world == 4:
        L = 65536
        cases.append(("scan-64k", dict(kind="scan", seed=4, shape=(1, 4, L, 8), varying=True, reverse=False,
                                       dtype=torch.float32, bounds=[0, L // 4, L // 2, 3 * L // 4, L])))
    return cases


def _run_case(case, rank, world, distributed):
    lo, hi = case["bounds"][rank], case["bounds"][rank + 1]
    if case["kind"] == "scan":
        cu = case.get("cu")
        inputs, grads = _scan_inputs(case["seed"], *case["shape"], case["varying"], case["dtype"], cu)
        first = world - 1 if case["reverse"] else 0
        mine = _scan_slice(inputs, lo, hi, rank, first, case["varying"], packed=cu is not None)
        return _run_scan(mine, grads, lo, hi, case["reverse"], group=None if distributed else False, cu=cu)
    cu = case.get("cu")
    inputs, grads = _attention_inputs(case["seed"], *case["shape"], seqs=None if cu is None else len(cu) - 1)
    return _run_attention(inputs, grads, lo, hi, rank, world, distributed, cu)


def _worker(rank, world, port, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        for name, case in _cases(world):
            once = _run_case(case, rank, world, True)
            again = _run_case(case, rank, world, True)
            same = torch.equal(once["out"], again["out"]) and all(
                (a is None and b is None) or torch.equal(a, b)
                for a, b in zip(once["grads"].values(), again["grads"].values()))
            results[name] = dict(once, bitwise_repeat=same)
        torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cat(parts, dim):
    return torch.cat(parts, dim=dim)


@pytest.mark.parametrize("world", [2, 4])
def test_context_parallel_equals_one_process(world):
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_worker, args=(world, _free_port(), folder), nprocs=world, join=True)
        ranks = [torch.load(os.path.join(folder, f"rank{r}.pt")) for r in range(world)]
    for name, case in _cases(world):
        per_rank = [r[name] for r in ranks]
        assert all(r["bitwise_repeat"] for r in per_rank), f"{name}: a second run gave other bits"
        whole = _run_case(dict(case, bounds=[0, case["bounds"][-1]]), 0, 1, False)
        fp32 = case.get("dtype") == torch.float32
        tol = dict(rtol=2e-4, atol=2e-4) if fp32 else dict(rtol=1e-9, atol=1e-9)
        seq_dim = -1 if case["kind"] == "scan" else 1
        torch.testing.assert_close(_cat([r["out"] for r in per_rank], seq_dim), whole["out"], **tol, msg=name)
        packed = case.get("cu") is not None
        exit_rank = 0 if case.get("reverse") else world - 1
        if packed and case["kind"] == "attention":  # the ranks' states combined: every final state
            from scangraph.distributed.context_parallel import _combine
            combined = per_rank[0]["last"]
            for r in per_rank[1:]:
                combined = _combine(combined, r["last"])
            for got, want in zip(combined, whole["last"]):
                torch.testing.assert_close(got, want, **tol, msg=f"{name}: final states")
        elif packed:  # every rank: the rows of the sequences it finishes, zeros elsewhere
            torch.testing.assert_close(sum(r["last"] for r in per_rank), whole["last"], **tol,
                                       msg=f"{name}: final states")
        else:
            assert all(per_rank[r]["last"] is None for r in range(world) if r != exit_rank), name
            for got, want in zip(per_rank[exit_rank]["last"] if case["kind"] == "attention" else
                                 [per_rank[exit_rank]["last"]],
                                 whole["last"] if case["kind"] == "attention" else [whole["last"]]):
                torch.testing.assert_close(got, want, **tol, msg=f"{name}: final state")
        for key, want in whole["grads"].items():
            if want is None:
                continue
            if key in ("u", "delta", "z", "k", "v") or (key in ("B", "C") and case.get("varying")):
                got = _cat([r["grads"][key] for r in per_rank], seq_dim)
            elif key in ("initial_state", "m0", "c0", "w0") and not packed:
                entry = world - 1 if case.get("reverse") else 0
                got = per_rank[entry]["grads"][key]
            else:  # replicated: each rank's share, summed over the group (packed initial states:
                # None on a rank where no sequence starts)
                shares = [r["grads"][key] for r in per_rank]
                assert all(g is not None for g in shares) or (packed and key in ("initial_state", "m0", "c0", "w0")), \
                    (name, key)
                got = sum(g for g in shares if g is not None)
            torch.testing.assert_close(got, want, **tol, msg=f"{name}: gradient of {key}")


def _mismatch_worker(rank, world, port, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        dim = 3 if rank == 0 else 5  # the ranks disagree on the number of channels
        u = torch.randn(1, dim, 10)
        messages = []
        try:
            scangraph.distributed.selective_scan(u, torch.rand(1, dim, 10), -torch.rand(dim, 4),
                                                 torch.randn(dim, 4), torch.randn(dim, 4))
        except ValueError as error:
            messages.append(str(error))
        try:  # both ranks pass an initial state: only rank 0 holds the sequence's start
            scangraph.distributed.selective_scan(torch.randn(1, 2, 10), torch.rand(1, 2, 10), -torch.rand(2, 4),
                                                 torch.randn(2, 4), torch.randn(2, 4),
                                                 initial_state=torch.zeros(1, 2, 4))
        except ValueError as error:
            messages.append(str(error))
        try:  # packed sequences: the ranks disagree on the offsets
            cu = torch.tensor([0, 5, 20] if rank == 0 else [0, 6, 20], dtype=torch.int32)
            scangraph.distributed.selective_scan(torch.randn(1, 2, 10), torch.rand(1, 2, 10), -torch.rand(2, 4),
                                                 torch.randn(2, 4), torch.randn(2, 4), cu_seqlens=cu)
        except ValueError as error:
            messages.append(str(error))
        try:  # packed sequences: initial_state is every sequence's
            scangraph.distributed.selective_scan(torch.randn(1, 2, 10), torch.rand(1, 2, 10), -torch.rand(2, 4),
                                                 torch.randn(2, 4), torch.randn(2, 4),
                                                 cu_seqlens=torch.tensor([0, 5, 20], dtype=torch.int32),
                                                 initial_state=torch.zeros(1, 2, 4))
        except ValueError as error:
            messages.append(str(error))
        torch.save(messages, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_bad_input_raises_clear_errors():
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_mismatch_worker, args=(2, _free_port(), folder), nprocs=2, join=True)
        messages = [torch.load(os.path.join(folder, f"rank{r}.pt")) for r in range(2)]
    # every rank raises the same error (a rank raising alone would leave the others waiting)
    for rank in range(2):
        assert len(messages[rank]) == 4, messages[rank]
        assert "disagree" in messages[rank][0] and "'dim': 3" in messages[rank][0] and "'dim': 5" in messages[rank][0]
        assert "rank(s) [1] must pass None" in messages[rank][1]
        assert "disagree" in messages[rank][2] and "offsets" in messages[rank][2]
        assert "(num_seqs, dim, N) = (2, 2, 4)" in messages[rank][3]


def test_without_a_process_group_raises():
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        scangraph.distributed.selective_scan(torch.randn(1, 2, 4), torch.rand(1, 2, 4), -torch.rand(2, 3),
                                             torch.randn(2, 3), torch.randn(2, 3))


def _module_worker(rank, world, port, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        for name, (model, x, bounds) in _modules(world, group=dist.group.WORLD).items():
            lo, hi = bounds[rank], bounds[rank + 1]
            part = x[:, lo:hi].clone().requires_grad_()
            out = model(part, **_packing(name, x))
            (out * _module_grad(x)[:, lo:hi]).sum().backward()
            results[name] = dict(out=out.detach(), dx=part.grad,
                                 params={n: p.grad for n, p in model.named_parameters()})
        torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _modules(world, group=None):
    """The context-parallel modules with fixed parameters, their input and the ranks' slices."""
    bounds = {2: [0, 23, 60], 4: [0, 9, 30, 33, 60]}[world]
    made = {}
    for name in ("mamba", "bimamba", "aaren", "mamba_packed", "bimamba_packed", "aaren_packed"):
        torch.manual_seed(5)
        if name == "mamba" or name == "mamba_packed":
            model = scangraph.nn.Mamba(6, d_state=4, d_conv=4, expand=2, process_group=group)
        elif name.startswith("bimamba"):
            model = scangraph.nn.BiMamba(6, d_state=4, d_conv=3, process_group=group)
        else:
            model = scangraph.nn.Aaren(6, heads=2, process_group=group)
        model = model.double()
        x = torch.randn(1 if name.endswith("packed") else 2, 60, 6, generator=torch.Generator().manual_seed(6),
                        dtype=torch.float64)
        made[name] = (model, x, bounds)
    return made


# Packed sequences through the whole L of 60 (an empty one, one of a single position, several
# crossing the slices' bounds of _modules): the same offsets on every rank.
PACKED_OFFSETS = [0, 5, 21, 21, 22, 40, 60]


def _packing(name, x):
    return {"cu_seqlens": torch.tensor(PACKED_OFFSETS, dtype=torch.int32)} if name.endswith("packed") else {}


def _module_grad(x):
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=x.dtype)


@pytest.mark.parametrize("world", [2, 4])
def test_modules_run_context_parallel(world):
    """Mamba (the conv's window reaching into the previous slice), BiMamba (and into the next),
    and Aaren, each also over packed sequences crossing the slices (cu_seqlens), with a process
    group: the slices' outputs and input gradients concatenated, and
    the parameter gradients summed over the ranks, equal the module on the whole sequence."""
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_module_worker, args=(world, _free_port(), folder), nprocs=world, join=True)
        ranks = [torch.load(os.path.join(folder, f"rank{r}.pt")) for r in range(world)]
    for name, (model, x, _) in _modules(world).items():
        x = x.clone().requires_grad_()
        out = model(x, **_packing(name, x))
        (out * _module_grad(x)).sum().backward()
        per_rank = [r[name] for r in ranks]
        tol = dict(rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(torch.cat([r["out"] for r in per_rank], 1), out.detach(), **tol, msg=name)
        torch.testing.assert_close(torch.cat([r["dx"] for r in per_rank], 1), x.grad, **tol, msg=name)
        for param, p in model.named_parameters():
            # Mamba hands A and D to the scan in float32 (as mamba_ssm does): their gradients come
            # back rounded to float32, each rank's share separately.
            close = dict(rtol=1e-6, atol=1e-7) if param.split(".")[-1] in ("A_log", "D") else tol
            got = sum(r["params"][param] for r in per_rank)
            assert torch.allclose(got, p.grad, **close), \
                f"{name}: gradient of {param}: largest difference {(got - p.grad).abs().max().item():.3g}"
