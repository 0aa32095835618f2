// Instantiates the sparse kernels for float (one file per dtype keeps nvcc runs parallel).
#include "sparse.h"
#include "sparse_kernel.cuh"
SCANGRAPH_INSTANTIATE_SPARSE(float)

// Common neighbours move indices only: their one instantiation lives here.
namespace scangraph {
void common_neighbors_cuda(const CommonNeighborParams& p, cudaStream_t stream) {
  cuda::launch_common_neighbors(p, stream);
}
}  // namespace scangraph
