"""Benchmark cases of the selective scan: forward and forward + backward of Mamba's S6 scan with
varying B / C (one group), z gating and D.

Baselines: mambapy (its own `pscan` and selective-scan formula, in its (batch, L, dim) layout)
when the package is installed, else the same formulation written out here (exp(delta A) and
delta B u materialised as (batch, dim, L, N), a work-efficient Blelloch scan over L, then the
contraction with C); and the sequential float reference (one position at a time). Bytes are
what the issue counts: u, delta, z, B, C read once, out written once.
"""
import math

import torch

import scangraph
from scangraph import reference
from scangraph.bench.case import Case, Options, our_backends

OPS = ("selective_scan",)


class _LinearScan(torch.autograd.Function):
    """h_t = a_t h_{t-1} + x_t along dim 2 of (batch, dim, L, N) tensors, by a Blelloch scan
    (up-sweep, then down-sweep) of the pairs (a, x) under (a1, x1) then (a2, x2) =
    (a1 a2, a2 x1 + x2); backward: the adjoint is the same scan run from the end with the gates
    shifted by one, then da_t = adjoint_t h_{t-1}."""

    @staticmethod
    def _scan_(a, x):
        length = x.shape[2]
        levels = max(1, math.ceil(math.log2(max(length, 1))))
        for level in range(levels):           # up-sweep: block totals at the end of each block
            half, step = 1 << level, 2 << level
            right = slice(step - 1, None, step)
            count = x[:, :, right].shape[2]
            left = slice(half - 1, half - 1 + step * count, step)
            x[:, :, right] += a[:, :, right] * x[:, :, left]
            a[:, :, right] *= a[:, :, left]
        for level in range(levels - 2, -1, -1):   # down-sweep: carry totals into block middles
            half, step = 1 << level, 2 << level
            target = slice(step - 1 + half, None, step)
            count = x[:, :, target].shape[2]
            source = slice(step - 1, step - 1 + step * count, step)
            x[:, :, target] += a[:, :, target] * x[:, :, source]
            a[:, :, target] *= a[:, :, source]
        return x

    @staticmethod
    def forward(ctx, a, x):
        h = _LinearScan._scan_(a.clone(), x.clone())
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, grad_h):
        a, h = ctx.saved_tensors
        shifted = torch.zeros_like(a)
        shifted[:, :, :-1] = a[:, :, 1:]
        adjoint = _LinearScan._scan_(shifted.flip(2), grad_h.flip(2).clone()).flip(2)
        h_prev = torch.zeros_like(h)
        h_prev[:, :, 1:] = h[:, :, :-1]
        return adjoint * h_prev, adjoint


def mambapy_scan(u, delta, A, B, C, D, z):
    """mambapy's selective scan formulation (B, C varying with one group: (batch, 1, N, L))."""
    delta_a = torch.exp(delta.unsqueeze(-1) * A.unsqueeze(1))                      # (b, d, L, N)
    delta_b_u = (delta * u).unsqueeze(-1) * B[:, 0].transpose(1, 2).unsqueeze(1)   # (b, d, L, N)
    h = _LinearScan.apply(delta_a, delta_b_u)
    y = (h * C[:, 0].transpose(1, 2).unsqueeze(1)).sum(-1) + D[:, None] * u
    return y * torch.nn.functional.silu(z)


def _mambapy_package_scan():
    """mambapy's own selective scan (its pscan, in its (batch, L, dim) layout), when installed."""
    try:
        from mambapy.pscan import pscan
    except ImportError:
        return None

    def scan(x, delta, A, B, C, D, z):   # x, delta, z: (batch, L, dim); B, C: (batch, L, N)
        delta_a = torch.exp(delta.unsqueeze(-1) * A)
        bx = (delta.unsqueeze(-1) * B.unsqueeze(2)) * x.unsqueeze(-1)
        h = pscan(delta_a, bx)
        y = (h @ C.unsqueeze(-1)).squeeze(3) + D * x
        return y * torch.nn.functional.silu(z)
    return scan


def _scan_case(batch, dim, length, dstate, dtype, device, options):
    quick = options.quick
    element = torch.empty((), dtype=dtype).element_size()
    u = torch.randn(batch, dim, length, dtype=dtype, device=device)
    delta = (torch.rand(batch, dim, length, device=device) * 0.1 + 0.001).to(dtype)
    A = -torch.rand(dim, dstate, device=device) - 0.5
    B = torch.randn(batch, 1, dstate, length, dtype=dtype, device=device)
    C = torch.randn(batch, 1, dstate, length, dtype=dtype, device=device)
    D = torch.randn(dim, device=device)
    z = torch.randn(batch, dim, length, dtype=dtype, device=device)
    grad = torch.randn(batch, dim, length, dtype=dtype, device=device)
    inputs = (u, delta, A, B, C, D, z)
    leaves = [t.clone().requires_grad_() for t in inputs]
    case = Case(op="selective_scan", label=f"b{batch} d{dim} L{length} N{dstate}", dtype=dtype, device=device,
                bytes_fwd=element * batch * length * (4 * dim + 2 * dstate),
                columns={"batch": batch, "dim": dim, "L": length, "N": dstate, "groups": 1})

    def add(impl, forward):
        def fwd_bwd():
            for t in leaves:
                t.grad = None
            forward(*leaves).backward(grad)
        case.impls[impl] = {"fwd": lambda: forward(*inputs), "fwd+bwd": fwd_bwd}

    for backend in our_backends("selective_scan", device, options):
        add(f"scangraph.{backend}", lambda *t, b=backend: scangraph.selective_scan(*t, backend=b))
    package_scan = _mambapy_package_scan()
    if package_scan is not None:
        # mambapy works in (batch, L, dim): its inputs are laid out so before timing starts
        native = [t.transpose(1, 2).contiguous() for t in (u, delta, z)] + \
            [t[:, 0].transpose(1, 2).contiguous() for t in (B, C)]
        native_leaves = [t.clone().requires_grad_() for t in native]
        grad_native = grad.transpose(1, 2).contiguous()
        A_, D_ = A.to(dtype), D.to(dtype)

        def mambapy_fwd_bwd():
            for t in native_leaves:
                t.grad = None
            x, dl, zz, bb, cc = native_leaves
            package_scan(x, dl, A_, bb, cc, D_, zz).backward(grad_native)
        x, dl, zz, bb, cc = native
        case.impls["mambapy"] = {"fwd": lambda: package_scan(x, dl, A_, bb, cc, D_, zz), "fwd+bwd": mambapy_fwd_bwd}
    else:  # the same formulation written out here
        add("mambapy_formulation",
            lambda u, delta, A, B, C, D, z: mambapy_scan(u, delta, A.to(dtype), B, C, D.to(dtype), z))
    if quick or (options.full and not options.gpu(device)):  # the sequential reference: L Python steps
        add("reference", lambda u, delta, A, B, C, D, z: reference.selective_scan(u, delta, A, B, C, D, z)[0])
    return case


def cases(device: torch.device, dtype: torch.dtype, options: Options):
    if "selective_scan" not in options.ops:
        return
    if options.quick:
        shape = (1, 16, 128, 16)
    elif options.gpu(device):
        shape = (8, 2048, 4096, 16)   # the GPU case of the issue
    else:
        shape = (2, 512, 2048, 16)    # the CPU case of the issue
    label = "b{} d{} L{} N{}".format(*shape)
    if options.only is None or options.only == label:
        yield _scan_case(*shape, dtype, device, options)
