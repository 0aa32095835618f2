// Instantiates the sparse kernels for __nv_bfloat16 (one file per dtype keeps nvcc runs parallel).
#include "sparse.h"
#include "sparse_kernel.cuh"
SCANGRAPH_INSTANTIATE_SPARSE(__nv_bfloat16)
