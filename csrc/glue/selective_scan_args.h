// Torch-side checks, copies and allocations shared by the CPU and CUDA glue of the selective
// scan ops. Kernels get the torch-free structs of selective_scan_params.h.
#pragma once
#include <optional>
#include <tuple>
#include <vector>

#include "scangraph/selective_scan_params.h"
#include "glue/common_args.h"
#include "glue/output_tensor.h"

namespace scangraph {

// Owns the contiguous (and acc-typed) copies that the parameter pointers refer to.
struct ScanInputs {
  Tensor u, delta, z, A, B, C, D, delta_bias, initial_state, cu_seqlens;
  SelectiveScanParams params{};
};

// D or delta_bias: (dim,) of any float dtype, copied to the accumulation type.
inline Tensor acc_vector(const std::optional<Tensor>& t, const Tensor& u, int64_t dim,
                         const char* op, const char* name) {
  if (!t.has_value()) return Tensor();
  check_shape(*t, {dim}, op, name);
  check_float(*t, op, name);
  check_same_device(*t, u, op, name);
  return as_contiguous(converted(*t, opmath_type(u.scalar_type())));
}

// B or C: fixed (dim, N), or varying (batch, N, L) (one group) or (batch, groups, N, L).
inline Tensor scan_bc(const Tensor& t, const Tensor& u, int64_t dstate, const char* op,
                      const char* name, int64_t& groups) {
  const int64_t batch = u.size(0), dim = u.size(1), length = u.size(2);
  check_float(t, op, name);
  check_same_device(t, u, op, name);
  if (t.dim() == 2) {
    SCANGRAPH_CHECK_VALUE(t.size(0) == dim && t.size(1) == dstate, op, ": fixed ", name, " must be (dim, N) = (",
                          dim, ", ", dstate, "), got ", shape_str(t.sizes()));
    groups = 0;
    return as_contiguous(converted(t, opmath_type(u.scalar_type())));
  }
  SCANGRAPH_CHECK_VALUE(t.dim() == 3 || t.dim() == 4, op, ": ", name, " must be (dim, N), (batch, N, L) or ",
                        "(batch, groups, N, L), got shape ", shape_str(t.sizes()));
  const Tensor v = t.dim() == 3 ? unsqueezed(t, 1) : t;
  SCANGRAPH_CHECK_VALUE(v.size(0) == batch && v.size(2) == dstate && v.size(3) == length, op, ": varying ", name,
                        " must be (batch, groups, N, L) with batch=", batch, ", N=", dstate, ", L=", length, ", got ",
                        shape_str(t.sizes()));
  SCANGRAPH_CHECK_VALUE(v.size(1) >= 1 && dim % v.size(1) == 0, op, ": dim (", dim, ") must be divisible by the ",
                        "number of groups of ", name, " (", v.size(1), ")");
  SCANGRAPH_CHECK_TYPE(t.scalar_type() == u.scalar_type(), op, ": varying ", name, " must have u's dtype (",
                       dtype_name(u.scalar_type()), "), got ", dtype_name(t.scalar_type()));
  groups = v.size(1);
  return as_contiguous(v);
}

inline ScanInputs prepare_scan_inputs(const Tensor& u, const Tensor& delta, const Tensor& A,
                                      const Tensor& B, const Tensor& C,
                                      const std::optional<Tensor>& D, const std::optional<Tensor>& z,
                                      const std::optional<Tensor>& delta_bias, bool delta_softplus,
                                      const std::optional<Tensor>& initial_state,
                                      const std::optional<Tensor>& cu_seqlens, bool reverse,
                                      const char* op) {
  // selective_scan's checks in ops/selective_scan.py, in its order and words.
  check_float(u, op, "u");
  SCANGRAPH_CHECK_VALUE(u.dim() == 3, op, ": u must be (batch, dim, L), got shape ", shape_str(u.sizes()));
  const ScalarType t = u.scalar_type();
  check_shape(delta, u.sizes(), op, "delta");
  check_dtype(delta, t, op, "delta");
  check_same_device(delta, u, op, "delta");
  const int64_t batch = u.size(0), dim = u.size(1), length = u.size(2);
  SCANGRAPH_CHECK_TYPE(!is_complex_type(A.scalar_type()), op,
                       ": complex A (mamba_ssm's S4D-style wtype=complex64) is not supported; ",
                       "use real A (Mamba's S4D-real initialisation) or mamba_ssm's selective_scan_fn for complex A");
  check_float(A, op, "A");
  check_same_device(A, u, op, "A");
  SCANGRAPH_CHECK_VALUE(A.dim() == 2 && A.size(0) == dim, op, ": A must be (dim, N) with dim = ", dim,
                        ", got shape ", shape_str(A.sizes()));
  const int64_t dstate = A.size(1);
  SCANGRAPH_CHECK_VALUE(dstate >= 1 && dstate <= kMaxDstate, op, ": the state size N = A.shape[1] must be in [1, ",
                        kMaxDstate, "], got ", dstate);
  ScanInputs in;
  const ScalarType acc = opmath_type(t);
  in.u = as_contiguous(u);
  in.delta = as_contiguous(delta);
  in.A = as_contiguous(converted(A, acc));
  int64_t groups_b = 0, groups_c = 0;
  in.B = scan_bc(B, u, dstate, op, "B", groups_b);
  in.C = scan_bc(C, u, dstate, op, "C", groups_c);
  SCANGRAPH_CHECK_VALUE(groups_b == groups_c || groups_b == 0 || groups_c == 0, op, ": B and C must have one number ",
                        "of groups when both vary, got ", shape_str(B.sizes()), " and ", shape_str(C.sizes()));
  SCANGRAPH_CHECK_VALUE(groups_b == groups_c, op, ": the raw op takes B and C both fixed or both varying, got ",
                        shape_str(B.sizes()), " and ", shape_str(C.sizes()), " (scangraph.selective_scan runs one ",
                        "fixed and one varying: both per channel)");
  in.D = acc_vector(D, u, dim, op, "D");
  in.delta_bias = acc_vector(delta_bias, u, dim, op, "delta_bias");
  if (z.has_value()) {
    check_shape(*z, u.sizes(), op, "z");
    check_dtype(*z, t, op, "z");
    check_same_device(*z, u, op, "z");
    in.z = as_contiguous(*z);
  }
  int64_t num_sequences = batch;
  if (cu_seqlens.has_value()) {
    num_sequences = check_cu_seqlens(*cu_seqlens, u, batch, length, op);
    in.cu_seqlens = as_contiguous(*cu_seqlens);
  }
  if (initial_state.has_value()) {
    const Tensor& h0 = *initial_state;
    check_shape(h0, {num_sequences, dim, dstate}, op, "initial_state");
    check_float(h0, op, "initial_state");
    check_same_device(h0, u, op, "initial_state");
    in.initial_state = as_contiguous(converted(h0, acc));
  }
  SelectiveScanParams& p = in.params;
  p.batch = batch;
  p.dim = dim;
  p.length = length;
  p.dstate = dstate;
  p.groups = groups_b;
  p.num_chunks = scan_num_chunks(length);
  p.num_sequences = num_sequences;
  p.delta_softplus = delta_softplus;
  p.reverse = reverse;
  p.u = in.u.data_ptr();
  p.delta = in.delta.data_ptr();
  p.z = in.z.defined() ? in.z.data_ptr() : nullptr;
  p.A = in.A.data_ptr();
  p.B = in.B.data_ptr();
  p.C = in.C.data_ptr();
  p.D = in.D.defined() ? in.D.data_ptr() : nullptr;
  p.delta_bias = in.delta_bias.defined() ? in.delta_bias.data_ptr() : nullptr;
  p.initial_state = in.initial_state.defined() ? in.initial_state.data_ptr() : nullptr;
  p.cu_seqlens = in.cu_seqlens.defined() ? in.cu_seqlens.const_data_ptr<int32_t>() : nullptr;
  return in;
}

struct ScanForwardCall {
  ScanInputs in;
  Tensor out, last_state, checkpoints;
};

inline ScanForwardCall prepare_selective_scan(
    const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
    const std::optional<Tensor>& D, const std::optional<Tensor>& z,
    const std::optional<Tensor>& delta_bias, bool delta_softplus,
    const std::optional<Tensor>& initial_state, const std::optional<Tensor>& cu_seqlens, bool reverse) {
  ScanForwardCall call{prepare_scan_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                           cu_seqlens, reverse, "selective_scan")};
  SelectiveScanParams& p = call.in.params;
  const ScalarType acc = opmath_type(u.scalar_type());
  call.out = empty_output(u.sizes().vec(), u.scalar_type(), u);
  call.last_state = empty_output({p.num_sequences, p.dim, p.dstate}, acc, u);
  call.checkpoints = empty_output({p.batch, p.dim, p.num_chunks, p.dstate}, acc, u);
  p.out = call.out.data_ptr();
  p.last_state = call.last_state.data_ptr();
  p.checkpoints = call.checkpoints.data_ptr();
  return call;
}

struct ScanBackwardCall {
  ScanInputs in;
  SelectiveScanBackwardParams params{};
  Tensor grad_out, grad_last_state, checkpoints;
  Tensor du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state, param_partial, bc_partial;
};

inline ScanBackwardCall prepare_selective_scan_backward(
    const Tensor& grad_out, const std::optional<Tensor>& grad_last_state, const Tensor& u,
    const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
    const std::optional<Tensor>& D, const std::optional<Tensor>& z,
    const std::optional<Tensor>& delta_bias, bool delta_softplus,
    const std::optional<Tensor>& initial_state, const std::optional<Tensor>& cu_seqlens, bool reverse,
    const Tensor& checkpoints, bool cpu_partials = true) {
  // cpu_partials: the partial buffers in the CPU kernel's layout (the CUDA glue makes its own).
  const char* op = "selective_scan_backward";
  ScanBackwardCall call{prepare_scan_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                            cu_seqlens, reverse, op)};
  const SelectiveScanParams& f = call.in.params;
  const ScalarType acc = opmath_type(u.scalar_type()), t = u.scalar_type();
  SCANGRAPH_CHECK(grad_out.sizes().equals(u.sizes()), op, ": grad_out must have u's shape ", sizes_str(u.sizes()),
                  ", got ", sizes_str(grad_out.sizes()));
  check_same_device(grad_out, u, op, "grad_out");
  if (grad_last_state.has_value()) check_same_device(*grad_last_state, u, op, "grad_last_state");
  check_same_device(checkpoints, u, op, "checkpoints");
  call.grad_out = as_contiguous(converted(grad_out, t));
  if (grad_last_state.has_value()) {
    const std::vector<int64_t> shape{f.num_sequences, f.dim, f.dstate};
    SCANGRAPH_CHECK(grad_last_state->sizes().equals(shape), op, ": grad_last_state must be (", f.num_sequences,
                    ", ", f.dim, ", ", f.dstate, "), got ", sizes_str(grad_last_state->sizes()));
    call.grad_last_state = as_contiguous(converted(*grad_last_state, acc));
  }
  const std::vector<int64_t> checkpoint_shape{f.batch, f.dim, f.num_chunks, f.dstate};
  SCANGRAPH_CHECK(checkpoints.sizes().equals(checkpoint_shape) && checkpoints.scalar_type() == acc, op,
                  ": checkpoints must be the forward's (", f.batch, ", ", f.dim, ", ", f.num_chunks, ", ", f.dstate,
                  ") ", scalar_type_name(acc), " tensor, got ", sizes_str(checkpoints.sizes()), " ",
                  scalar_type_name(checkpoints.scalar_type()));
  call.checkpoints = as_contiguous(checkpoints);
  const std::vector<int64_t> u_shape = u.sizes().vec();
  call.du = empty_output(u_shape, t, u);
  call.ddelta = empty_output(u_shape, t, u);
  call.dz = empty_output(call.in.z.defined() ? u_shape : std::vector<int64_t>{0}, t, u);
  call.dA = empty_output({f.dim, f.dstate}, acc, u);
  if (f.groups == 0) {
    call.dB = empty_output({f.dim, f.dstate}, acc, u);
    call.dC = empty_output({f.dim, f.dstate}, acc, u);
    call.bc_partial = empty_output({0}, acc, u);
  } else {
    call.dB = empty_output(call.in.B.sizes().vec(), t, u);
    call.dC = empty_output(call.in.C.sizes().vec(), t, u);
    call.bc_partial = cpu_partials ? zeros_tensor({scan_partitions(f.dim / f.groups), f.batch, f.groups, 2,
                                                   f.dstate, f.length}, acc, u)
                                   : empty_output({0}, acc, u);
  }
  // Absent inputs get zero-size gradients.
  const auto gradient = [&](bool present, const std::vector<int64_t>& shape) {
    return empty_output(present ? shape : std::vector<int64_t>{0}, acc, u);
  };
  call.dD = gradient(call.in.D.defined(), {f.dim});
  call.ddelta_bias = gradient(call.in.delta_bias.defined(), {f.dim});
  call.dinitial_state = gradient(call.in.initial_state.defined(), {f.num_sequences, f.dim, f.dstate});
  call.param_partial = cpu_partials ? zeros_tensor({f.batch, f.dim, 3 * f.dstate + 2}, acc, u)
                                    : empty_output({0}, acc, u);
  SelectiveScanBackwardParams& p = call.params;
  p.fwd = f;
  p.fwd.checkpoints = call.checkpoints.data_ptr();
  p.grad_out = call.grad_out.data_ptr();
  p.grad_last_state = call.grad_last_state.defined() ? call.grad_last_state.data_ptr() : nullptr;
  p.du = call.du.data_ptr();
  p.ddelta = call.ddelta.data_ptr();
  p.dz = call.in.z.defined() ? call.dz.data_ptr() : nullptr;
  p.dA = call.dA.data_ptr();
  p.dB = call.dB.data_ptr();
  p.dC = call.dC.data_ptr();
  p.dD = call.in.D.defined() ? call.dD.data_ptr() : nullptr;
  p.ddelta_bias = call.in.delta_bias.defined() ? call.ddelta_bias.data_ptr() : nullptr;
  p.dinitial_state = call.in.initial_state.defined() ? call.dinitial_state.data_ptr() : nullptr;
  p.param_partial = call.param_partial.data_ptr();
  p.bc_partial = f.groups == 0 ? nullptr : call.bc_partial.data_ptr();
  return call;
}

// The gradients in the dtypes of the inputs they belong to (the kernels produce acc for the
// acc-typed inputs); a varying B given as (batch, N, L) gets its gradient in that shape.
inline std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                  Tensor>
scan_backward_results(ScanBackwardCall& call, const Tensor& A, const Tensor& B, const Tensor& C,
                      const std::optional<Tensor>& D, const std::optional<Tensor>& delta_bias,
                      const std::optional<Tensor>& initial_state) {
  const auto in_dtype_of = [](const Tensor& gradient, const std::optional<Tensor>& input) {
    return input.has_value() ? converted(gradient, input->scalar_type()) : gradient;
  };
  Tensor dB = reshaped(converted(call.dB, B.scalar_type()), B.sizes());
  Tensor dC = reshaped(converted(call.dC, C.scalar_type()), C.sizes());
  return {call.du, call.ddelta, converted(call.dA, A.scalar_type()), dB, dC, in_dtype_of(call.dD, D), call.dz,
          in_dtype_of(call.ddelta_bias, delta_bias), in_dtype_of(call.dinitial_state, initial_state)};
}

// selective_state_update: the state is updated in place; a state not in acc is updated
// through an acc copy, written back after the kernel.
struct StateUpdateCall {
  SelectiveStateUpdateParams params{};
  Tensor state_acc, x, dt, A, B, C, D, z, dt_bias, out;
  bool copy_back = false;
};

inline StateUpdateCall prepare_state_update(const Tensor& state, const Tensor& x, const Tensor& dt,
                                            const Tensor& A, const Tensor& B, const Tensor& C,
                                            const std::optional<Tensor>& D,
                                            const std::optional<Tensor>& z,
                                            const std::optional<Tensor>& dt_bias, bool dt_softplus) {
  const char* op = "selective_state_update";
  SCANGRAPH_CHECK(x.dim() == 2, op, ": x must be (batch, dim), got shape ", sizes_str(x.sizes()));
  const ScalarType t = x.scalar_type();
  const char* t_name = scalar_type_name(t);
  SCANGRAPH_CHECK(is_float_dtype(t), op, ": x must be float32, float16, bfloat16 or float64, got ", t_name);
  const int64_t batch = x.size(0), dim = x.size(1);
  // "must match x": the same shape and dtype.
  const auto check_like_x = [&](const Tensor& v, const char* name) {
    SCANGRAPH_CHECK(v.sizes().equals(x.sizes()) && v.scalar_type() == t, op, ": ", name, " must match x (",
                    sizes_str(x.sizes()), ", ", t_name, "), got ", sizes_str(v.sizes()), ", ",
                    scalar_type_name(v.scalar_type()));
  };
  check_like_x(dt, "dt");
  SCANGRAPH_CHECK(A.dim() == 2 && A.size(0) == dim && is_floating_type(A.scalar_type()), op,
                  ": A must be a real (dim, N) tensor with dim = ", dim, ", got ", sizes_str(A.sizes()), " ",
                  scalar_type_name(A.scalar_type()));
  const int64_t dstate = A.size(1);
  SCANGRAPH_CHECK(dstate >= 1 && dstate <= kMaxDstate, op, ": N must be in [1, ", kMaxDstate, "], got ", dstate);
  SCANGRAPH_CHECK(state.dim() == 3 && state.size(0) == batch && state.size(1) == dim && state.size(2) == dstate &&
                      is_floating_type(state.scalar_type()),
                  op, ": state must be a float (batch, dim, N) = (", batch, ", ", dim, ", ", dstate,
                  ") tensor, got ", sizes_str(state.sizes()), " ", scalar_type_name(state.scalar_type()));
  for (const Tensor* other : {&dt, &A, &B, &C, &state}) check_same_device(*other, x, op, "an input", "x");
  StateUpdateCall call;
  const ScalarType acc = opmath_type(t);
  const auto bc = [&](const Tensor& v, const char* name) {
    SCANGRAPH_CHECK((v.dim() == 2 || v.dim() == 3) && v.size(0) == batch && v.size(v.dim() - 1) == dstate, op,
                    ": ", name, " must be (batch, N) or (batch, groups, N), got shape ", sizes_str(v.sizes()));
    const Tensor g = v.dim() == 2 ? unsqueezed(v, 1) : v;
    SCANGRAPH_CHECK(g.size(1) >= 1 && dim % g.size(1) == 0, op, ": dim (", dim,
                    ") must be divisible by the groups of ", name, " (", g.size(1), ")");
    SCANGRAPH_CHECK(v.scalar_type() == t, op, ": ", name, " must have x's dtype (", t_name, "), got ",
                    scalar_type_name(v.scalar_type()));
    return as_contiguous(g);
  };
  call.B = bc(B, "B");
  call.C = bc(C, "C");
  SCANGRAPH_CHECK(call.B.size(1) == call.C.size(1), op, ": B and C must have one number of groups");
  call.x = as_contiguous(x);
  call.dt = as_contiguous(dt);
  call.A = as_contiguous(converted(A, acc));
  call.D = acc_vector(D, x, dim, op, "D");
  call.dt_bias = acc_vector(dt_bias, x, dim, op, "dt_bias");
  if (z.has_value()) {
    check_like_x(*z, "z");
    check_same_device(*z, x, op, "z", "x");
    call.z = as_contiguous(*z);
  }
  call.copy_back = state.scalar_type() != acc || !state.is_contiguous();
  call.state_acc = call.copy_back ? as_contiguous(converted(state, acc)) : state;
  call.out = empty_output(x.sizes().vec(), t, x);
  SelectiveStateUpdateParams& p = call.params;
  p.batch = batch;
  p.dim = dim;
  p.dstate = dstate;
  p.groups = call.B.size(1);
  p.dt_softplus = dt_softplus;
  p.state = call.state_acc.data_ptr();
  p.x = call.x.data_ptr();
  p.dt = call.dt.data_ptr();
  p.A = call.A.data_ptr();
  p.B = call.B.data_ptr();
  p.C = call.C.data_ptr();
  p.D = call.D.defined() ? call.D.data_ptr() : nullptr;
  p.z = call.z.defined() ? call.z.data_ptr() : nullptr;
  p.dt_bias = call.dt_bias.defined() ? call.dt_bias.data_ptr() : nullptr;
  p.out = call.out.data_ptr();
  return call;
}

}  // namespace scangraph
