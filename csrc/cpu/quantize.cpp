// CPU kernel of quantize: symmetric per-channel int8 / int4 quantization (absmax / qmax scales).
#include "cpu/lowp_common.h"

namespace scangraph {
namespace {

// ---- quantize ---------------------------------------------------------------------------------
template <typename scalar_t>
void quantize_kernel(const QuantizeParams& p) {
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  const int qmax = quant_max(p.bits);
  // Pass 1: absmax of every channel (elements (o, c, i) at (o * channels + c) * inner + i).
  parallel_for(0, p.channels, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      float m = 0.0f;
      for (int64_t o = 0; o < p.outer; ++o) {
        const float mo = absmax(x + (o * p.channels + c) * p.inner, p.inner);
        m = (mo > m || mo != mo) ? mo : m;  // keeps a NaN once seen
      }
      p.scale[c] = m / float(qmax);
    }
  });
  for (int64_t c = 0; c < p.channels; ++c) check_finite(std::isfinite(p.scale[c]), "quantize");
  // Pass 2: one output row (of the last dimension) per step, packing pairs for 4 bits.
  const int64_t L = p.last_dim, rows = L == 0 ? 0 : (p.outer * p.channels * p.inner) / L;
  const int64_t row_bytes = p.bits == 4 ? (L + 1) / 2 : L;
  parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* xr = x + r * L;
      auto q_at = [&](int64_t j) {
        const int64_t channel = ((r * L + j) / p.inner) % p.channels;
        return quantize_value(to_float(xr[j]), p.scale[channel], qmax);
      };
      int8_t* out = p.data + r * row_bytes;
      if (p.bits == 8) {
        for (int64_t j = 0; j < L; ++j) out[j] = static_cast<int8_t>(q_at(j));
      } else {
        for (int64_t b = 0; b < row_bytes; ++b) {
          const int lo = q_at(2 * b), hi = 2 * b + 1 < L ? q_at(2 * b + 1) : 0;
          out[b] = static_cast<int8_t>((lo & 0xF) | ((hi & 0xF) << 4));
        }
      }
    }
  });
}

std::tuple<Tensor, Tensor> quantize_cpu(const Tensor& x, int64_t bits, std::optional<int64_t> axis) {
  KernelCall<QuantizeParams> call = prepare_quantize(x, bits, axis);
  dispatch_float(x.scalar_type(), "quantize_cpu",
                 [&](auto element) { quantize_kernel<element_t<decltype(element)>>(call.params); });
  return {call.out, call.out2};
}

}  // namespace

SCANGRAPH_CPU_IMPLS(m) {
  SCANGRAPH_IMPL(m, "quantize", &quantize_cpu);
}

}  // namespace scangraph
