// cam_norm for fp32, fp16 and bf16 maps without an fp32 copy: loads convert to fp32, stores convert back.
// Few, large planes are split into chunks (grid = chunks x planes) so that every multiprocessor has work: a
// first launch writes each chunk's maximum, a second reduces a plane's partials and scales its chunk. Many
// or small planes: one block per plane, maximum then scale in one launch. bindings.cpp launches large planes
// in groups that fit in a third of the L2, so the second read of a plane mostly hits the cache.
// Maxima propagate NaN (fmaxf would drop it): a plane holding a NaN gives NaN, like the reference.
#include <cmath>

#include "ops.h"

namespace fastwsss {
namespace {

constexpr int kThreads = 256;
constexpr long kMinChunk = 16384;  // elements: a chunk smaller than this is not worth its own block

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// max that keeps a NaN from either side
__device__ __forceinline__ float nan_max(float a, float b) { return (b > a || b != b) ? b : a; }
// relu that keeps NaN (the reference's torch.relu)
__device__ __forceinline__ float nan_relu(float v) { return (v > 0.0f || v != v) ? v : 0.0f; }

// The block's NaN-propagating maximum of relu(x[begin:end)); every thread gets it.
template <typename T>
__device__ float block_max(const T* __restrict__ x, long begin, long end) {
  __shared__ float partial[kThreads / 32];
  float peak = 0.0f;
  for (long i = begin + threadIdx.x; i < end; i += kThreads) peak = nan_max(peak, to_float(x[i]));
  for (int offset = 16; offset > 0; offset >>= 1) peak = nan_max(peak, __shfl_xor_sync(0xffffffffu, peak, offset));
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = peak;
  __syncthreads();
  peak = partial[0];
  for (int w = 1; w < kThreads / 32; ++w) peak = nan_max(peak, partial[w]);
  __syncthreads();  // partial may be reused by the caller's next block_max
  return peak;
}

template <typename T>
__device__ void scale(const T* __restrict__ x, T* __restrict__ out, long begin, long end, float denom) {
  for (long i = begin + threadIdx.x; i < end; i += kThreads) out[i] = from_float<T>(__fdiv_rn(nan_relu(to_float(x[i])), denom));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) fused_kernel(const T* __restrict__ x, T* __restrict__ out, long n, float eps) {
  const long base = static_cast<long>(blockIdx.y) * n;
  const float peak = block_max(x + base, 0, n);
  scale(x + base, out + base, 0, n, peak + eps);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) partial_max_kernel(const T* __restrict__ x, float* __restrict__ partial,
                                                               long n, long chunk) {
  const long base = static_cast<long>(blockIdx.y) * n;
  const long begin = static_cast<long>(blockIdx.x) * chunk;
  const long end = begin + chunk < n ? begin + chunk : n;
  const float peak = block_max(x + base, begin, end);
  if (threadIdx.x == 0) partial[static_cast<long>(blockIdx.y) * gridDim.x + blockIdx.x] = peak;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) scale_kernel(const T* __restrict__ x, const float* __restrict__ partial,
                                                         T* __restrict__ out, long n, long chunk, float eps) {
  const float* mine = partial + static_cast<long>(blockIdx.y) * gridDim.x;
  float peak = 0.0f;
  for (unsigned int c = 0; c < gridDim.x; ++c) peak = nan_max(peak, mine[c]);
  const long base = static_cast<long>(blockIdx.y) * n;
  const long begin = static_cast<long>(blockIdx.x) * chunk;
  const long end = begin + chunk < n ? begin + chunk : n;
  scale(x + base, out + base, begin, end, peak + eps);
}

}  // namespace

int cam_norm_chunks(long planes, long n, int sms) {
  if (planes <= 0 || n <= 2 * kMinChunk || planes >= 2L * sms) return 1;
  const long wanted = (2L * sms + planes - 1) / planes;
  const long most = n / kMinChunk;
  return static_cast<int>(wanted < most ? wanted : most);
}

template <typename T>
cudaError_t cam_norm(const T* x, T* out, float* partial, long planes, long n, float eps, int sms, cudaStream_t stream) {
  if (planes == 0 || n == 0) return cudaSuccess;
  if (planes > 65535) return cudaErrorInvalidValue;  // grid.y; bindings.cpp splits larger inputs
  const int chunks = cam_norm_chunks(planes, n, sms);
  if (chunks == 1) {
    fused_kernel<T><<<dim3(1, static_cast<unsigned int>(planes)), kThreads, 0, stream>>>(x, out, n, eps);
    return cudaGetLastError();
  }
  const long chunk = (n + chunks - 1) / chunks;
  const dim3 grid(static_cast<unsigned int>((n + chunk - 1) / chunk), static_cast<unsigned int>(planes));
  partial_max_kernel<T><<<grid, kThreads, 0, stream>>>(x, partial, n, chunk);
  scale_kernel<T><<<grid, kThreads, 0, stream>>>(x, partial, out, n, chunk, eps);
  return cudaGetLastError();
}

template cudaError_t cam_norm<float>(const float*, float*, float*, long, long, float, int, cudaStream_t);
template cudaError_t cam_norm<__half>(const __half*, __half*, float*, long, long, float, int, cudaStream_t);
template cudaError_t cam_norm<__nv_bfloat16>(const __nv_bfloat16*, __nv_bfloat16*, float*, long, long, float, int,
                                             cudaStream_t);

}  // namespace fastwsss
