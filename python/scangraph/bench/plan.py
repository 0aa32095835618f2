"""python -m scangraph.bench --plan: every GPU kernel's launch at the GPU bench shapes, and what
it predicts on an H100 / H200, without a GPU (docs/plan.md says how to read it).

For each op, case and pass it runs the bench case's calls on CPU tensors with the CUDA kernels'
own launchers under the test emulation in record-only mode and the Triton launchers in the
interpreter with launches recorded, not run (scangraph.bench.gpu_resources). Per launch: grid and
block, warps, registers and shared memory (ptxas), resident blocks per SM, waves, and the longest
chain of dependent steps per warp of the scan kernels. Per op: compulsory bytes and their time at
3.35 TB/s (H100 SXM) and 4.8 TB/s (H200), the special-function bound of the scans' exponentials,
and the latency bound of the dependent chains; the prediction is the largest of the three.
"""
import math
import os

import torch

# The GPU the plan describes: H100 SXM / H200 (Hopper, sm_90), NVIDIA's published figures.
SMS = 132
REGISTERS_PER_SM = 65536
SHARED_PER_SM = 228 * 1024
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
CLOCK_HZ = 1.98e9            # boost clock
SFU_PER_SM_PER_CLOCK = 16    # ex2 / rcp throughput of the special-function units
BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}
# Model: one dependent step (a shuffle, a link of an FMA chain, an exp2) costs this many cycles
# on average, so that a warp's chain of S steps takes S x CYCLES_PER_STEP / CLOCK_HZ.
CYCLES_PER_STEP = 16

# Constants of the kernels the chain model counts (the CUDA ones asserted in the kernels'
# headers: kScanTile = 32 lanes x 4 positions, a warp scan of 5 shuffle steps).
SCAN_TILE, SCAN_ITEMS, WARP_SCAN = 128, 4, 5
SCAN_STATE_STEPS = 2 * SCAN_ITEMS + WARP_SCAN + 2   # fold, scan, exclusive shift, carry, apply


def resident_blocks(threads, registers, shared):
    """Blocks of one kernel resident on one SM: the least of the warp, block, register and
    shared-memory limits (registers allocated per warp in units of 256)."""
    warps = max(1, math.ceil(threads / 32))
    by_warps = MAX_WARPS_PER_SM // warps
    by_regs = REGISTERS_PER_SM // (warps * math.ceil(max(registers, 1) * 32 / 256) * 256) if registers else by_warps
    by_shared = SHARED_PER_SM // shared if shared else MAX_BLOCKS_PER_SM
    return max(0, min(MAX_BLOCKS_PER_SM, by_warps, by_regs, by_shared))


def _channels_per_worker(columns, segments, workers):
    """(batch, channel, segment) units one warp (CUDA) or program (Triton) walks one after
    another: 1 when each has its own, more when a varying-B / C backward walks rounds of channels."""
    return max(1, math.ceil(columns["batch"] * columns["dim"] * segments / max(workers, 1)))


def chain_steps(kernel, grid, warps, columns, backend):
    """Dependent steps of the longest warp of a scan kernel (None for the others, whose work per
    warp is a row or an edge block: memory bound)."""
    L, N = columns.get("L"), columns.get("N")
    base = kernel.split("<")[0]
    if L is None:
        return None
    if base in ("scan_forward_kernel", "scan_flow_kernel", "scan_backward_kernel"):
        segments = max(1, grid[1])
        tiles = math.ceil(L / SCAN_TILE)
        per = math.ceil(tiles / segments) * N * SCAN_STATE_STEPS * _channels_per_worker(columns, segments, warps)
        # the backward: a forward pass for y (z gates), the recompute, the reverse scan, 3 sums
        return per * 4 if base == "scan_backward_kernel" else per
    if base in ("scan_segments_kernel", "scan_flow_segments_kernel"):
        return 2 * math.ceil(math.ceil(L / SCAN_TILE) / 1)  # at most one step per tile-segment
    heads, batch = columns.get("heads"), columns.get("batch")
    if base.startswith("prefix_attention") and heads:
        if "combine" in base or "dq" in base:  # one step per segment, segments of at least 16
            return 6 * math.ceil(L / 16)
        if backend == "triton":  # grid (sequences, heads, segments)
            segments = max(1, grid[2])
        else:                    # one warp per (sequence, head, segment)
            segments = max(1, math.ceil(warps / (batch * heads)))
        # per position: the dot product's 5-shuffle butterfly, the max and exp, the update
        return math.ceil(L / segments) * (12 if "fwd" in base else 24)
    if base in ("selective_scan_fwd_kernel", "selective_scan_flow_kernel", "selective_scan_bwd_kernel"):
        # grid (programs, segments); a program walks its segment in sub-chunks of SUB positions,
        # each a tl.associative_scan of log2(SUB) levels (two in the flow and the backward: the
        # states and the adjoint, and the backward recomputes the states), for each of its channels
        from scangraph.triton_kernels.selective_scan import state_block

        segments = max(1, grid[1])
        sub = state_block(N, backward=base != "selective_scan_fwd_kernel")[1]
        per = math.ceil(math.ceil(L / segments) / sub) * (2 * int(math.log2(sub)) + 4)
        per *= _channels_per_worker(columns, segments, grid[0] * grid[1])
        return per * {"selective_scan_fwd_kernel": 1, "selective_scan_flow_kernel": 1, "selective_scan_bwd_kernel": 2}[base]
    if base == "selective_scan_segments_kernel":  # one multiply-add per segment
        return 2 * math.ceil(L / 64)
    return None


def exponentials(kernel, columns):
    """Special-function operations of a scan kernel's launch (exp2 of every position and state)."""
    base = kernel.split("<")[0]
    if base in ("scan_forward_kernel", "scan_flow_kernel", "selective_scan_fwd_kernel", "selective_scan_flow_kernel"):
        return columns["batch"] * columns["dim"] * columns["L"] * columns["N"]
    if base in ("scan_backward_kernel", "selective_scan_bwd_kernel"):  # CUDA: y for z's gradient, states, adjoint
        count = 3 if base == "scan_backward_kernel" else 1
        return count * columns["batch"] * columns["dim"] * columns["L"] * columns["N"]
    return 0


def plan_rows(dtype=torch.float32, ops=None, data_dir=None):
    """(launch rows, op rows) of every bench case at the GPU shapes."""
    from scangraph import bench
    from scangraph.bench.case import Options
    from scangraph.bench.gpu_resources import (compile_triton, cuda_resources, distinct, kernel_name, record_cuda,
                                               record_triton)

    with record_cuda():  # loads the emulated CUDA kernels (backend "cuda_emulated") the cases need
        pass
    options = Options(quick=False, data_dir=data_dir, features=[128], ops=tuple(ops or bench.default_ops()),
                      gpu_shapes=True, backends=("cuda_emulated", "triton"),
                      graphs=("email-Enron",) if data_dir else None)
    launches, op_rows = [], []
    triton_variants = []
    for case in bench.cases(torch.device("cpu"), dtype, options):
        for backend in ("cuda_emulated", "triton"):
            impl = case.impls.get(f"scangraph.{backend}")
            if impl is None:
                continue
            for pass_name in ("fwd", "fwd+bwd"):
                if pass_name not in impl:
                    continue
                if backend == "cuda_emulated":
                    with record_cuda() as recorded:
                        impl[pass_name]()
                    for name, grid, block in recorded:
                        launches.append(dict(case=case, backend="cuda", pass_name=pass_name, kernel=name, grid=grid,
                                             threads=block[0] * block[1] * block[2]))
                else:
                    with record_triton(run=False) as recorded:
                        impl[pass_name]()
                    triton_variants += recorded
                    for r in recorded:
                        launches.append(dict(case=case, backend="triton", pass_name=pass_name, kernel=r["name"],
                                             grid=r["grid"], threads=32 * r["num_warps"], key=r["key"]))
    cuda_usage = cuda_resources()
    triton_usage = {r["key"]: r for r in compile_triton(distinct(triton_variants))}
    rows = []
    for launch in launches:
        case = launch["case"]
        if launch["backend"] == "cuda":
            registers, shared, spills = cuda_usage.get(launch["kernel"], (None, 0, 0))
        else:
            compiled = triton_usage.get(launch["key"], {})
            registers, shared, spills = compiled.get("registers"), compiled.get("shared_bytes", 0), \
                compiled.get("spill_bytes", 0)
        blocks = launch["grid"][0] * launch["grid"][1] * launch["grid"][2]
        warps = blocks * math.ceil(launch["threads"] / 32)
        resident = resident_blocks(launch["threads"], registers or 0, shared or 0)
        waves = blocks / (SMS * resident) if resident else float("inf")
        steps = chain_steps(kernel_name(launch["kernel"]), launch["grid"], warps, case.columns, launch["backend"])
        rows.append(dict(op=case.op, case=case.label, pass_name=launch["pass_name"], backend=launch["backend"],
                         kernel=launch["kernel"], grid=launch["grid"], threads=launch["threads"], warps=warps,
                         registers=registers, shared=shared, spills=spills, resident=resident, waves=waves,
                         chain=steps, exps=exponentials(launch["kernel"], case.columns),
                         bytes=case.bytes_fwd * (2 if launch["pass_name"] == "fwd+bwd" else 1)))
    groups = {}
    for r in rows:
        groups.setdefault((r["op"], r["case"], r["pass_name"], r["backend"]), []).append(r)
    for (op, label, pass_name, backend), rs in groups.items():
        moved = rs[0]["bytes"]
        memory = {gpu: moved / bw for gpu, bw in BANDWIDTH.items()}
        sfu = sum(r["exps"] for r in rs) / (SMS * SFU_PER_SM_PER_CLOCK * CLOCK_HZ)
        latency = sum(math.ceil(r["waves"]) * r["chain"] * CYCLES_PER_STEP / CLOCK_HZ
                      for r in rs if r["chain"] is not None and math.isfinite(r["waves"]))
        predicted = {gpu: max(memory[gpu], sfu, latency) for gpu in BANDWIDTH}
        op_rows.append(dict(op=op, case=label, pass_name=pass_name, backend=backend, launches=len(rs),
                            min_waves=min(r["waves"] for r in rs), bytes=moved, memory=memory, sfu=sfu,
                            latency=latency, predicted=predicted,
                            ratio={gpu: predicted[gpu] / memory[gpu] for gpu in BANDWIDTH}))
    return rows, op_rows


def format_plan(rows, op_rows):
    lines = ["# launch plan at the GPU bench shapes, for an H100 SXM / H200 (132 SMs); "
             f"model: {CYCLES_PER_STEP} cycles per dependent step at {CLOCK_HZ / 1e9:.2f} GHz", "",
             f"{'op / pass / backend':34} {'kernel':44} {'grid':>15} {'thr':>4} {'regs':>4} {'res':>3} "
             f"{'waves':>6} {'chain':>7}"]
    for r in rows:
        grid = "x".join(str(g) for g in r["grid"])
        chain = "-" if r["chain"] is None else str(r["chain"])
        lines.append(f"{r['op'] + ' ' + r['pass_name'] + ' ' + r['backend']:34} {r['kernel'][:44]:44} {grid:>15} "
                     f"{r['threads']:>4} {str(r['registers']):>4} {r['resident']:>3} {r['waves']:6.2f} {chain:>7}")
    lines += ["", f"{'op / case / pass / backend':52} {'MB':>7} {'H100 us':>8} {'H200 us':>8} {'SFU us':>7} "
              f"{'chain us':>8} {'pred/roof':>9}"]
    for o in op_rows:
        lines.append(f"{o['op'] + ' ' + o['case'] + ' ' + o['pass_name'] + ' ' + o['backend']:52} "
                     f"{o['bytes'] / 1e6:7.1f} {o['memory']['H100'] * 1e6:8.1f} {o['memory']['H200'] * 1e6:8.1f} "
                     f"{o['sfu'] * 1e6:7.1f} {o['latency'] * 1e6:8.1f} "
                     f"{o['ratio']['H100']:4.2f}/{o['ratio']['H200']:4.2f}")
    return "\n".join(lines)


def main(args):
    if os.environ.get("TRITON_INTERPRET") != "1":
        # The Triton launches are recorded in the interpreter, which Triton picks when a kernel
        # is defined: scangraph has defined them by now, so the plan runs in a fresh process.
        import subprocess
        import sys

        env = dict(os.environ, TRITON_INTERPRET="1")
        sys.exit(subprocess.call([sys.executable, "-m", "scangraph.bench", *sys.argv[1:]], env=env))
    from scangraph import datasets
    rows, op_rows = plan_rows(ops=args.ops.split(",") if args.ops else None,
                              data_dir=args.data or datasets.shared_data_dir())
    print(format_plan(rows, op_rows))
    return rows, op_rows
