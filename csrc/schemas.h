// The one schema list of the scangraph op library, read by registration.cpp (TORCH_LIBRARY)
// and by the test-only CUDA emulation (csrc/testing/cuda_emulation_schemas.cpp), which defines
// `<name>_cuda_emulated` twins with the same schemas. CPU kernels register in csrc/cpu, CUDA kernels
// in csrc/cuda/*_launch.cpp, Triton kernels as `<op>_triton` from Python; fake kernels and
// autograd are registered in python/scangraph/ops.
#pragma once

namespace scangraph {

inline constexpr const char* kSchemas[] = {
    // Sparse message passing over a CSR graph (rows are destinations, col holds sources).
    // rowptr_t / col_t / perm_t: the cached transpose (perm_t maps its edges to edge ids of the
    // original), used only by the backward; kernels ignore them.
    "spmm(Tensor rowptr, Tensor col, Tensor? weight, Tensor x, str reduce=\"sum\", "
        "Tensor? rowptr_t=None, Tensor? col_t=None, Tensor? perm_t=None) -> Tensor",
    // Max / min: also returns arg, the winning edge id of every output (-1 for empty rows).
    "spmm_arg(Tensor rowptr, Tensor col, Tensor? weight, Tensor x, str reduce, "
        "Tensor? rowptr_t=None, Tensor? col_t=None, Tensor? perm_t=None) -> (Tensor, Tensor)",
    // Its backward: (dx, dweight); dweight is (num_edges, heads), or (0, heads) if not wanted.
    "spmm_arg_backward(Tensor rowptr, Tensor col, Tensor rowptr_t, Tensor col_t, "
        "Tensor perm_t, Tensor? weight, Tensor x, Tensor grad, Tensor arg, bool weight_grad) "
        "-> (Tensor, Tensor)",
    // GAT aggregation with an online softmax -> (out, row_max, row_sum); the row statistics
    // (float, double for double x) feed the backward, which recomputes the attention weights.
    // dropout p > 0 drops attention coefficients by the Philox mask of rng = (seed, offset), an
    // int64 (2,) tensor on x's device (scangraph/philox.h).
    "gat_aggregate(Tensor rowptr, Tensor col, Tensor x, Tensor alpha_src, Tensor alpha_dst, "
        "float negative_slope=0.2, Tensor? rowptr_t=None, Tensor? col_t=None, Tensor? perm_t=None, "
        "float dropout=0.0, Tensor? rng=None) -> (Tensor, Tensor, Tensor)",
    // -> (dx, dalpha_src, dalpha_dst); delta = (out * grad).sum(-1) in the statistics' dtype.
    "gat_aggregate_backward(Tensor rowptr, Tensor col, Tensor rowptr_t, Tensor col_t, Tensor perm_t, Tensor x, "
        "Tensor alpha_src, Tensor alpha_dst, Tensor row_max, Tensor row_sum, Tensor delta, Tensor grad, "
        "float negative_slope, float dropout=0.0, Tensor? rng=None) -> (Tensor, Tensor, Tensor)",
    // Common neighbours of node pairs by sorted-merge intersection of their CSR rows, as a CSR
    // over pairs: (ptr (P + 1,) int64, neighbors (total,) of col's dtype).
    "common_neighbors(Tensor rowptr, Tensor col, Tensor src, Tensor dst) -> (Tensor, Tensor)",
    "sddmm(Tensor rowptr, Tensor col, Tensor a, Tensor b, "
        "Tensor? rowptr_t=None, Tensor? col_t=None, Tensor? perm_t=None) -> Tensor",

    // Selective scan (Mamba's S6). -> (out, last_state, checkpoints): last_state (states, dim, N)
    // and checkpoints (batch, dim, chunks, N), the state entering every kScanChunk positions,
    // are float (double for double u); the backward recomputes each chunk from its checkpoint.
    "selective_scan(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
        "Tensor? delta_bias, bool delta_softplus, Tensor? initial_state, Tensor? cu_seqlens, "
        "bool reverse) -> (Tensor, Tensor, Tensor)",
    // -> (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state); absent inputs get
    // zero-size gradients.
    "selective_scan_backward(Tensor grad_out, Tensor? grad_last_state, Tensor u, Tensor delta, "
        "Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, bool delta_softplus, "
        "Tensor? initial_state, Tensor? cu_seqlens, bool reverse, Tensor checkpoints) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    // One decode step: updates state (batch, dim, N) in place, returns y (batch, dim).
    "selective_state_update(Tensor(a!) state, Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, "
        "Tensor? D, Tensor? z, Tensor? dt_bias, bool dt_softplus) -> Tensor",

    // Causal depthwise convolution of Mamba's block (the causal-conv1d package's): x (batch, dim,
    // L), weight (dim, W), W <= 4, bias (dim,); out = silu?(bias + sum_j weight_j x_{l-W+1+j}).
    // seq_idx (batch, L) int32 keeps taps within a packed sequence; initial_states (batch, dim,
    // W - 1) are the inputs before position 0 (the two exclude each other).
    "causal_conv1d(Tensor x, Tensor weight, Tensor? bias, Tensor? seq_idx, Tensor? initial_states, "
        "bool silu) -> Tensor",
    // -> (dx, dweight, dbias, dinitial_states); absent inputs get zero-size gradients.
    "causal_conv1d_backward(Tensor x, Tensor weight, Tensor? bias, Tensor? seq_idx, Tensor? initial_states, "
        "Tensor grad_out, bool silu) -> (Tensor, Tensor, Tensor, Tensor)",
    // One decoding call: x (batch, dim, seqlen); conv_state (slots, dim, state_len) updated in
    // place, a circular buffer with cache_seqlens (batch,) int32; conv_state_indices (batch,)
    // int32 picks each row's slot, negative for padding rows (out 0, state untouched).
    "causal_conv1d_update(Tensor x, Tensor(a!) conv_state, Tensor weight, Tensor? bias, bool silu, "
        "Tensor? cache_seqlens, Tensor? conv_state_indices) -> Tensor",

    // Prefix-scan attention (Aaren): o_t = sum_{j<=t} softmax_j(scale q . k_j) v_j for every t.
    // q (heads, d) or (batch, heads, d); k (batch, L, heads, d); v (batch, L, heads, dv). The
    // initial state (m0, c0, w0) is none or all three, opmath (float; double for double inputs),
    // (seqs, heads), (seqs, heads), (seqs, heads, dv); cu_seqlens: int32 offsets of packed
    // sequences (batch == 1). Returns o, the per-position max m and denominator c (batch, L,
    // heads; kept for the backward) and the final state (m_last, c_last, w_last).
    "prefix_attention(Tensor q, Tensor k, Tensor v, float scale, Tensor? m0, Tensor? c0, Tensor? w0, "
        "Tensor? cu_seqlens) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    // -> (dq, dk, dv, dm0, dc0, dw0); the state gradients are returned even without m0.
    "prefix_attention_backward(Tensor q, Tensor k, Tensor v, float scale, Tensor? m0, Tensor? c0, "
        "Tensor? w0, Tensor? cu_seqlens, Tensor o, Tensor m, Tensor c, Tensor c_last, Tensor w_last, "
        "Tensor grad_o, Tensor grad_m_last, Tensor grad_c_last, Tensor grad_w_last) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    // One streaming step: k, v (batch, heads, d | dv); the state is updated in place; -> o_t.
    "prefix_attention_step(Tensor(a!) m, Tensor(b!) c, Tensor(c!) w, Tensor q, Tensor k, Tensor v, "
        "float scale) -> Tensor",

    // Low-precision GNN matmul (symmetric quantization, fp32 scales; docs/lowp.md).
    // -> (data, scale): data int8 of x's shape, or for bits=4 uint8 with the last dimension packed
    // two values per byte; scale (channels,) float32, one per index along axis (axis=None: one).
    "quantize(Tensor x, int bits, int? axis) -> (Tensor, Tensor)",
    // act(acc * sx * w_scale + bias) with x quantized per row inside the kernel and acc the int32
    // product with w (int8 (N, K), or packed int4 (N, ceil(K / 2)) for w_bits=4). activation:
    // none | relu | gelu | silu; out_dtype float32 | float16 | bfloat16, or int32 for acc itself.
    "qlinear(Tensor x, Tensor w, Tensor w_scale, int w_bits, int in_features, Tensor? bias, "
        "str activation=\"none\", ScalarType? out_dtype=None) -> Tensor",
    // qlinear on one named CPU path, isa = scalar | avx2 | avx512_vnni | amx (errors where the CPU lacks
    // it); qlinear itself picks the best the CPU has. Lets tests compare the paths bit for bit.
    "_qlinear_cpu_isa(Tensor x, Tensor w, Tensor w_scale, int w_bits, int in_features, Tensor? bias, "
        "str activation, ScalarType? out_dtype, str isa) -> Tensor",
    // spmm over int8 per-row quantized features: fp32 out, dequantization fused per edge.
    "qspmm(Tensor rowptr, Tensor col, Tensor? weight, Tensor x, Tensor x_scale, "
        "str reduce=\"sum\") -> Tensor",
    // qspmm on a named CPU instruction set (scalar, avx2, avx512), for tests.
    "_qspmm_cpu_isa(Tensor rowptr, Tensor col, Tensor? weight, Tensor x, Tensor x_scale, str reduce, "
        "str isa) -> Tensor",
};

}  // namespace scangraph
