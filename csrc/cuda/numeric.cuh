// Number types shared by the CUDA kernels: the accumulation type of each storage dtype (fp32
// for fp32 / fp16 / bf16, fp64 for fp64), conversions to and from it, and precise exp / exp2
// in it. Torch-free.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace scangraph {
namespace numeric {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename T> __device__ __forceinline__ typename Acc<T>::type to_acc(T v) {
  return static_cast<typename Acc<T>::type>(v);
}
template <> __device__ __forceinline__ float to_acc<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
// Rounds once, to nearest even, from the accumulation type to the storage type.
template <typename T, typename A> __device__ __forceinline__ T from_acc(A v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_acc<__half, float>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

// fp32 whatever the storage type, fp64 included: the low-precision kernels scale in fp32.
template <typename T> __device__ __forceinline__ float to_float(T v) { return static_cast<float>(to_acc(v)); }
template <typename T> __device__ __forceinline__ T from_float(float v) { return from_acc<T, float>(v); }

// Precise math (no fast-math intrinsics): the tests compare with float64 references.
__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float exp2_acc(float x) { return exp2f(x); }
__device__ __forceinline__ double exp2_acc(double x) { return exp2(x); }

}  // namespace numeric
}  // namespace scangraph
