// Instantiates the sparse kernels for double (one file per dtype keeps nvcc runs parallel).
#include "sparse.h"
#include "sparse_kernel.cuh"
SCANGRAPH_INSTANTIATE_SPARSE(double)
