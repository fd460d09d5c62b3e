// cam_norm: one block per (image, class) plane. Pass 1 reduces the plane's ReLU maximum in shared memory,
// pass 2 writes relu(x) / (max + eps). Memory traffic: the plane is read twice and written once.
#include "ops.h"

namespace fastwsss {
namespace {

constexpr int kThreads = 256;

__global__ void cam_norm_kernel(const float* __restrict__ x, float* __restrict__ out, long n, float eps) {
  __shared__ float partial[kThreads];
  const long plane = blockIdx.x;
  const float* src = x + plane * n;
  float* dst = out + plane * n;
  float peak = 0.0f;  // ReLU: the maximum of relu(x) is at least 0
  for (long i = threadIdx.x; i < n; i += blockDim.x) peak = fmaxf(peak, src[i]);
  partial[threadIdx.x] = peak;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) partial[threadIdx.x] = fmaxf(partial[threadIdx.x], partial[threadIdx.x + stride]);
    __syncthreads();
  }
  const float scale = 1.0f / (partial[0] + eps);
  for (long i = threadIdx.x; i < n; i += blockDim.x) dst[i] = fmaxf(src[i], 0.0f) * scale;
}

}  // namespace

cudaError_t cam_norm_f32(const float* x, float* out, long planes, long n, float eps, cudaStream_t stream) {
  if (planes == 0 || n == 0) return cudaSuccess;
  cam_norm_kernel<<<static_cast<unsigned int>(planes), kThreads, 0, stream>>>(x, out, n, eps);
  return cudaGetLastError();
}

}  // namespace fastwsss
