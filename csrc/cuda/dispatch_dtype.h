// Torch glue shared by the CUDA families: the one switch from a torch dtype to the element type of
// the kernels' typed entry points (declared in each family's .h, explicitly instantiated once per
// <family>_<dtype>.cu), run on the current stream, then a check of the launch. Adding a dtype is a
// case here and one <family>_<dtype>.cu per family; the call sites do not change.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "glue/cuda_context.h"
#include "glue/torch_api.h"  // ScalarType, ElementType, element_t, SCANGRAPH_CHECK

namespace scangraph {

// launch(ElementType<T>{}, stream), as in [&](auto t, cudaStream_t s) { f<element_t<decltype(t)>>(p, s); }.

template <typename Launch>
void dispatch_dtype(ScalarType dtype, const char* op, Launch&& launch) {
  cudaStream_t stream = current_cuda_stream();
  switch (dtype) {
    case ScalarType::Double: launch(ElementType<double>{}, stream); break;
    case ScalarType::Float: launch(ElementType<float>{}, stream); break;
    case ScalarType::Half: launch(ElementType<__half>{}, stream); break;
    case ScalarType::BFloat16: launch(ElementType<__nv_bfloat16>{}, stream); break;
    default: SCANGRAPH_CHECK(false, op, ": unsupported dtype ", scalar_type_name(dtype));
  }
  // Launchers skip empty grids; this reports a failed launch of the ones that ran.
  check_cuda_launch();
}

}  // namespace scangraph
