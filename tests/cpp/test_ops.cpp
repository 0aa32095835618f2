// ctest: loads the op library built by CMake and checks spmm / sddmm through the dispatcher
// against dense products on a random graph, that a bad column index raises, and the causal
// convolution against at::conv1d.
#include <dlfcn.h>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <optional>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::printf("%s: %s\n", ok ? "ok" : "FAILED", what);
  if (!ok) ++failures;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: test_ops <path of the scangraph op library>\n");
    return 2;
  }
  if (!dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL)) {
    std::fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
    return 2;
  }
  using Opt = std::optional<at::Tensor>;
  auto spmm = c10::Dispatcher::singleton()
                  .findSchemaOrThrow("scangraph::spmm", "")
                  .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const Opt&,
                                    const at::Tensor&, c10::string_view, const Opt&, const Opt&,
                                    const Opt&)>();
  auto sddmm = c10::Dispatcher::singleton()
                   .findSchemaOrThrow("scangraph::sddmm", "")
                   .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     const at::Tensor&, const Opt&, const Opt&, const Opt&)>();

  at::manual_seed(7);
  const int64_t rows = 50, cols = 37, features = 45;
  // A random dense 0/1 pattern with weights; its CSR form feeds the op, the dense form checks it.
  at::Tensor mask = at::rand({rows, cols}, at::kDouble) < 0.2;
  at::Tensor weights = at::rand({rows, cols}, at::kDouble) * mask;
  at::Tensor csr = weights.to_sparse_csr();
  at::Tensor rowptr = csr.crow_indices().to(at::kLong), col = csr.col_indices().to(at::kInt);
  at::Tensor values = csr.values();
  at::Tensor x = at::randn({cols, features}, at::kDouble);

  at::Tensor out = spmm.call(rowptr, col, values, x, "sum", {}, {}, {});
  expect(at::allclose(out, at::matmul(weights, x), 1e-12, 1e-12), "spmm sum equals the dense product");

  at::Tensor degree = mask.sum(1, /*keepdim=*/true).clamp_min(1).to(at::kDouble);
  at::Tensor mean = spmm.call(rowptr, col, {}, x, "mean", {}, {}, {});
  expect(at::allclose(mean, at::matmul(mask.to(at::kDouble), x) / degree, 1e-12, 1e-12),
         "spmm mean equals the degree-normalised dense product");

  at::Tensor a = at::randn({rows, features}, at::kDouble);
  at::Tensor dots = sddmm.call(rowptr, col, a, x, {}, {}, {});
  at::Tensor dense_dots = at::matmul(a, x.t()).masked_select(mask);  // row-major = CSR order
  expect(at::allclose(dots, dense_dots, 1e-12, 1e-12), "sddmm equals the masked dense product");

  at::Tensor bad_col = col.clone();
  bad_col.index_put_({0}, cols + 3);
  bool raised = false;
  try {
    spmm.call(rowptr, bad_col, {}, x, "sum", {}, {}, {});
  } catch (const c10::Error&) {
    raised = true;
  }
  expect(raised, "an out-of-range column index raises");

  auto conv = c10::Dispatcher::singleton()
                  .findSchemaOrThrow("scangraph::causal_conv1d", "")
                  .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const Opt&, const Opt&, const Opt&, bool)>();
  const int64_t channels = 6, width = 4, length = 33;
  at::Tensor signal = at::randn({2, channels, length}, at::kDouble);
  at::Tensor taps = at::randn({channels, width}, at::kDouble), shift = at::randn({channels}, at::kDouble);
  at::Tensor causal = conv.call(signal, taps, shift, {}, {}, /*silu=*/false);
  at::Tensor dense = at::conv1d(signal, taps.unsqueeze(1), shift, 1, width - 1, 1, channels).slice(2, 0, length);
  expect(at::allclose(causal, dense, 1e-12, 1e-12), "causal_conv1d equals the padded grouped conv1d");
  return failures == 0 ? 0 : 1;
}
