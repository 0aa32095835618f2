// Instantiates the sparse kernels for float (one file per dtype keeps nvcc runs parallel).
#include "sparse.h"
#include "sparse_kernel.cuh"
SCANGRAPH_INSTANTIATE_SPARSE(float)

// Common neighbours and the split plan move indices only: their one instantiation lives here.
namespace scangraph {
namespace cuda {

// The split plan's passes (SplitPlanParams), one thread per item: thread 0 writes segment_ptr[0],
// thread r + 1 the segment count of row r.
__global__ void segment_count_kernel(SplitPlanParams p) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i > p.num_rows) return;
  int64_t count = 0;
  if (i > 0) {
    const int64_t degree = p.rowptr[i] - p.rowptr[i - 1];
    if (degree > kSpmmSplitEdges) count = (degree + kSpmmSplitEdges - 1) / kSpmmSplitEdges;
  }
  p.segment_ptr[i] = count;
}

// After the prefix sum: segment s lies in the row r with segment_ptr[r] <= s < segment_ptr[r + 1],
// found as an edge's row is.
__global__ void segment_row_kernel(SplitPlanParams p) {
  const int64_t s = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= p.max_segments) return;
  p.segment_row[s] = row_of_edge(p.segment_ptr, p.num_rows, s);
}

}  // namespace cuda

void common_neighbors_cuda(const CommonNeighborParams& p, cudaStream_t stream) {
  cuda::launch_common_neighbors(p, stream);
}
void split_plan_counts_cuda(const SplitPlanParams& p, cudaStream_t stream) {
  cuda::launch_index_threads<cuda::segment_count_kernel>(p.num_rows + 1, stream, p);
}
void split_plan_rows_cuda(const SplitPlanParams& p, cudaStream_t stream) {
  cuda::launch_index_threads<cuda::segment_row_kernel>(p.max_segments, stream, p);
}
}  // namespace scangraph
