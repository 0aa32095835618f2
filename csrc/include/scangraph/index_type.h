// A graph's column indices are int32 or int64, a run-time property of the graph (its params'
// col_is_int32, set by the glue). dispatch_index is the one switch from it to a kernel's
// `index_t`, for the CPU and the CUDA kernels alike: launch(index_t{}).
#pragma once

#include <cstdint>

namespace scangraph {

template <typename Launch>
inline void dispatch_index(bool col_is_int32, Launch&& launch) {
  if (col_is_int32) launch(int32_t{});
  else launch(int64_t{});
}

}  // namespace scangraph
