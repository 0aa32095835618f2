// Instantiates the selective-scan kernels for __half (one file per dtype keeps nvcc runs parallel).
#include "selective_scan.h"
#include "selective_scan_kernel.cuh"
SCANGRAPH_INSTANTIATE_SCAN(__half)
