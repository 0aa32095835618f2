// Dropout inside fused kernels from counter-based random bits: Philox4x32-10 (Salmon et al.,
// "Parallel random numbers: as easy as 1, 2, 3", SC 2011), the generator behind torch's CUDA
// dropout and Triton's tl.randint. Nothing per element is stored: a backward regenerates the
// mask from (seed, offset) and the element's index. The CPU and CUDA kernels (this header), the
// Triton kernels (triton_kernels/philox.py) and the Python reference (reference.dropout_keep)
// share one bit layout, so their masks agree element for element (docs/sparse.md):
//   key     = (seed mod 2^32, seed div 2^32)
//   counter = (n mod 2^32, n div 2^32, offset mod 2^32, offset div 2^32)
//   keep    = (word 0 of Philox4x32-10(counter, key)) >> 8  >=  threshold,
//             threshold = floor(p * 2^24 + 1/2),
// n the element's index (for GAT attention: CSR edge * heads + head). A kept element is scaled
// by 1 / (1 - p), as torch.nn.functional.dropout does.
#pragma once
#include <cstdint>

#include "scangraph/host_device.h"

namespace scangraph {

// Random123's constants: the round multipliers and the Weyl key increments.
constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

// Word 0 of Philox4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1).
SCANGRAPH_HOST_DEVICE uint32_t philox4x32_10_word0(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                                   uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(kPhiloxM0) * c0, p1 = uint64_t(kPhiloxM1) * c2;
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0, n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    c1 = uint32_t(p1);
    c3 = uint32_t(p0);
    c0 = n0;
    c2 = n2;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return c0;
}

// A fused kernel's dropout: rng == nullptr means none. rng points to (seed, offset) in the
// kernel's memory, drawn from torch's generator by the caller (so a CUDA graph replays a new
// draw each time rather than one mask forever).
struct DropoutParams {
  const int64_t* rng = nullptr;
  uint32_t threshold = 0;  // floor(p * 2^24 + 1/2)
  double scale = 1.0;      // 1 / (1 - p); 0 for p = 1
};

// The rule of p: kept when the 24 random bits are >= floor(p * 2^24 + 1/2); scaled by 1 / (1 - p).
inline uint32_t dropout_threshold(double p) { return uint32_t(p * double(1u << 24) + 0.5); }
inline double dropout_scale(double p) { return p < 1.0 ? 1.0 / (1.0 - p) : 0.0; }

// The factor element n is multiplied by: scale if kept, else 0 (1 without dropout).
template <typename acc_t>
SCANGRAPH_HOST_DEVICE acc_t dropout_factor(const DropoutParams& d, uint64_t seed, uint64_t offset, uint64_t n) {
  if (d.rng == nullptr) return acc_t(1);
  const uint32_t bits = philox4x32_10_word0(uint32_t(n), uint32_t(n >> 32), uint32_t(offset), uint32_t(offset >> 32),
                                            uint32_t(seed), uint32_t(seed >> 32));
  return (bits >> 8) >= d.threshold ? acc_t(d.scale) : acc_t(0);
}

}  // namespace scangraph
