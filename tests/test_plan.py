"""The launch plan's shape rules, on the bench's CPU shapes of the scans (the CUDA launchers under
the emulation in record-only mode, the Triton launchers in the interpreter, recorded, not run):
a later change cannot quietly fall back to one warp walking a whole sequence."""
import math

import pytest
import torch

import cuda_emulation
import scangraph
import test_op_samples
from op_samples import SAMPLES
from scangraph.bench import plan
from scangraph.bench.gpu_resources import kernel_name, record_cuda, record_triton
from scangraph.backend import triton_unavailable_reason

TARGET_WARPS = plan.SMS * 64     # the launch rules' target: every SM holding its most warps


def _scan_inputs(batch, dim, length, dstate):
    return dict(u=torch.randn(batch, dim, length), delta=torch.rand(batch, dim, length), A=-torch.rand(dim, dstate),
                B=torch.randn(batch, 1, dstate, length), C=torch.randn(batch, 1, dstate, length), D=torch.randn(dim),
                z=torch.randn(batch, dim, length))


def _prefix_inputs(batch, heads, dim, length):
    return torch.randn(heads, dim), torch.randn(batch, length, heads, dim), torch.randn(batch, length, heads, dim)


def _record(backend, run):
    if backend == "cuda_emulated":
        reason = cuda_emulation.load()
        if reason:
            pytest.skip(reason)
        with record_cuda() as launches:
            run()
        return [(name, grid, block[0] // 32) for name, grid, block in launches]
    reason = triton_unavailable_reason(torch.device("cpu"))
    if reason:
        pytest.skip(reason)
    with record_triton(run=False) as launches:
        run()
    return [(launch["name"], launch["grid"], launch["num_warps"]) for launch in launches]


def _warps(grid, warps_per_block):
    return grid[0] * grid[1] * grid[2] * warps_per_block


@pytest.mark.parametrize("backend", ("cuda_emulated", "triton"))
def test_prefix_attention_fills_the_gpu_along_L(backend):
    """b4 h8 L4096: 32 (sequence, head) pairs; the segments give every main pass at least the
    target's warps and each warp at most a short run of positions."""
    q, k, v = _prefix_inputs(4, 8, 64, 4096)
    leaves = [t.requires_grad_() for t in (q, k, v)]

    def run():
        scangraph.prefix_attention(*leaves, backend=backend).sum().backward()

    launches = _record(backend, run)
    main = [(n, g, w) for n, g, w in launches if kernel_name(n).split("<")[0] in
            ("prefix_attention_fwd_kernel", "prefix_attention_bwd_kernel")]
    assert len(main) == 4  # summary and full pass, forward and backward
    for name, grid, warps in main:
        assert _warps(grid, warps) >= 0.9 * TARGET_WARPS, (name, grid)
        segments = grid[2] if backend == "triton" else math.ceil(_warps(grid, warps) / 32)
        assert math.ceil(4096 / segments) <= 64, (name, grid)  # positions walked by one warp / program


def test_selective_scan_cuda_fills_the_gpu_along_L():
    """b2 d512 L2048 N16 (the CPU bench shape): 1024 channels; the forward and backward cut L into
    segments of a few 128-position tiles, so warps >= the target and the chain stays short."""
    inputs = {k: v.requires_grad_() for k, v in _scan_inputs(2, 512, 2048, 16).items()}

    def run():
        scangraph.selective_scan(**inputs, backend="cuda_emulated").sum().backward()

    launches = _record("cuda_emulated", run)
    columns = dict(batch=2, dim=512, L=2048, N=16)
    seen = set()
    for name, grid, warps in launches:
        base = kernel_name(name).split("<")[0]
        if base not in ("scan_forward_kernel", "scan_flow_kernel", "scan_backward_kernel"):
            continue
        seen.add(base)
        assert _warps(grid, warps) >= 0.9 * TARGET_WARPS, (name, grid)
        steps = plan.chain_steps(kernel_name(name), grid, _warps(grid, warps), columns, "cuda")
        # a sequential walk would be 2048 positions x 16 states; the plan's rule: a few tiles
        assert steps <= 4 * (2048 // 128) * 16 * plan.SCAN_STATE_STEPS // 4, (name, steps)
    assert seen == {"scan_forward_kernel", "scan_flow_kernel", "scan_backward_kernel"}


def test_resident_blocks_follow_the_hardware_limits():
    assert plan.resident_blocks(128, 32, 0) == 16            # 64 warps
    assert plan.resident_blocks(256, 255, 0) == 1            # registers
    assert plan.resident_blocks(128, 64, 100 * 1024) == 2    # shared memory
    assert plan.resident_blocks(32, 16, 0) == 32             # the block limit


@pytest.mark.parametrize("batch, dim, length, groups", [(2, 512, 2048, 1), (1, 64, 32768, 1), (1, 64, 32768, None)])
def test_selective_scan_triton_fills_the_gpu_along_L(batch, dim, length, groups):
    """The CPU bench shape and a GraphMamba-style packed call (one sequence of 32768 tokens, 64
    channels): the forward's, the flow pass's and the backward's programs x warps reach the
    target, and no program walks more than its segment of L (for each of its channels: the varying
    backward's partitions walk rounds of channels)."""
    inputs = {k: v.requires_grad_() for k, v in _scan_inputs(batch, dim, length, 16).items()}
    if groups is None:
        inputs["B"], inputs["C"] = (torch.randn(dim, 16).requires_grad_() for _ in range(2))

    def run():
        scangraph.selective_scan(**inputs, backend="triton").sum().backward()

    launches = _record("triton", run)
    columns = dict(batch=batch, dim=dim, L=length, N=16)
    seen = set()
    for name, grid, warps in launches:
        base = kernel_name(name)
        if base not in ("selective_scan_fwd_kernel", "selective_scan_flow_kernel", "selective_scan_bwd_kernel"):
            continue
        seen.add(base)
        assert _warps(grid, warps) >= 0.9 * TARGET_WARPS, (name, grid, warps)
        positions = math.ceil(length / grid[1])
        steps = plan.chain_steps(base, grid, _warps(grid, warps), columns, "triton")
        channels = plan._channels_per_worker(columns, grid[1], grid[0] * grid[1])
        assert steps <= 2 * channels * math.ceil(positions / 64) * 16, (name, steps)
    assert seen >= {"selective_scan_fwd_kernel", "selective_scan_bwd_kernel"}
    if length > 4096:
        assert "selective_scan_flow_kernel" in seen


@pytest.mark.parametrize("sample", [s for s in SAMPLES if s.op == "common_neighbor_aggregate"], ids=lambda s: s.id)
def test_triton_variants_recorded_without_running_are_those_run(sample):
    """tools/triton_compile_check.py records the variants without running the kernels. The
    common-neighbour lists are the launches whose sizes come from a kernel's output (the counts):
    recorded with the kernels not run (zero counts) and run in the interpreter, the same variants."""
    reason = triton_unavailable_reason(torch.device("cpu"))
    if reason:
        pytest.skip(reason)
    keys = {}
    for run in (False, True):
        torch.manual_seed(0)
        with record_triton(run=run) as launches:
            test_op_samples._run(sample, test_op_samples._prepare(sample, torch.float32), "triton")
        keys[run] = {launch["key"] for launch in launches}
    assert keys[False] == keys[True]
