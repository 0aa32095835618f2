// Instantiates the causal convolution kernels for double (one file per dtype keeps nvcc runs parallel).
#include "causal_conv1d.h"
#include "causal_conv1d_kernel.cuh"
SCANGRAPH_INSTANTIATE_CONV(double)
