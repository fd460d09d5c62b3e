// Random-walk steps in gather form, one thread per (image, class, pixel), two ping-pong buffers. Two launch
// schemes:
//  - per step: one launch per step (2^exp_times launches, each paying a launch gap of microseconds);
//  - persistent: ONE cooperative launch whose threads loop over the steps with a grid-wide barrier between
//    them (grid.sync), so the 256 steps of the default walk pay one launch. The grid is capped at the blocks
//    that can be co-resident; threads stride over the elements when there are more.
// The tap weights (B, T, h, w) are shared by the K classes of an image and stay in L2. Inside the persistent
// kernel the ping-pong buffers are written by other blocks between barriers, so they are read with __ldcg
// (L2, not the incoherent L1 / read-only path); the weights and offsets never change and use __ldg.
#include <cooperative_groups.h>

#include "ops.h"

namespace fastwsss {
namespace {

constexpr int kThreads = 256;

// One output element of one step: sum over the taps of w[image, t, pixel] * src[plane, pixel + offset_t].
// kL2 reads `src` through L2 only (__ldcg): inside the persistent kernel other blocks rewrote it since the
// last barrier. `dy`, `dx` may point to shared or global memory.
template <bool kL2>
__device__ __forceinline__ float walk_element(const float* src, const float* __restrict__ w, const int* dy,
                                              const int* dx, int taps, int classes, int height, int width,
                                              long index) {
  const long n = static_cast<long>(height) * width;
  const long pixel = index % n;
  const long plane = index / n;        // b * classes + k
  const long image = plane / classes;  // b
  const int y = static_cast<int>(pixel / width);
  const int x = static_cast<int>(pixel % width);
  const float* plane_src = src + plane * n;
  const float* weights = w + image * taps * n + pixel;
  float acc = 0.0f;
  for (int t = 0; t < taps; ++t) {
    const int yy = y + dy[t];
    const int xx = x + dx[t];
    if (yy >= 0 && yy < height && xx >= 0 && xx < width) {
      const float* value = plane_src + static_cast<long>(yy) * width + xx;
      acc = fmaf(__ldg(weights + t * n), kL2 ? __ldcg(value) : __ldg(value), acc);
    }
  }
  return acc;
}

__global__ void walk_step_kernel(const float* __restrict__ src, float* __restrict__ dst, const float* __restrict__ w,
                                 const int* __restrict__ dy, const int* __restrict__ dx, int taps, int classes,
                                 int height, int width, long total) {
  const long index = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= total) return;
  dst[index] = walk_element<false>(src, w, dy, dx, taps, classes, height, width, index);
}

__global__ void walk_persistent_kernel(float* a, float* b, const float* __restrict__ w, const int* __restrict__ dy,
                                       const int* __restrict__ dx, int taps, int classes, int height, int width,
                                       long total, long steps) {
  extern __shared__ int shared_offsets[];  // dy[0..taps), dx[0..taps)
  for (int t = threadIdx.x; t < taps; t += blockDim.x) {
    shared_offsets[t] = __ldg(dy + t);
    shared_offsets[taps + t] = __ldg(dx + t);
  }
  __syncthreads();
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  const long stride = static_cast<long>(gridDim.x) * blockDim.x;
  const long first = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (long s = 0; s < steps; ++s) {
    const float* src = (s % 2 == 0) ? a : b;
    float* dst = (s % 2 == 0) ? b : a;
    for (long index = first; index < total; index += stride) {
      dst[index] = walk_element<true>(src, w, shared_offsets, shared_offsets + taps, taps, classes, height, width,
                                      index);
    }
    grid.sync();
  }
}

}  // namespace

cudaError_t random_walk_steps_persistent_f32(float* x, float* scratch, const float* w, const int* dy, const int* dx,
                                             int taps, int batch, int classes, int height, int width, long steps,
                                             cudaStream_t stream) {
  long total = static_cast<long>(batch) * classes * height * width;
  if (total == 0 || steps == 0) return cudaSuccess;
  int device = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status != cudaSuccess) return status;
  int cooperative = 0;
  int sms = 0;
  if ((status = cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device)) != cudaSuccess) return status;
  if ((status = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess) return status;
  if (!cooperative) return cudaErrorNotSupported;
  const size_t shared = 2 * static_cast<size_t>(taps) * sizeof(int);
  int per_sm = 0;
  status = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, walk_persistent_kernel, kThreads, shared);
  if (status != cudaSuccess) return status;
  if (per_sm < 1) return cudaErrorNotSupported;
  const long needed = (total + kThreads - 1) / kThreads;
  const long resident = static_cast<long>(per_sm) * sms;
  dim3 grid(static_cast<unsigned int>(needed < resident ? needed : resident));
  dim3 block(kThreads);
  float* a = x;
  float* b = scratch;
  void* args[] = {&a, &b, const_cast<float**>(&w), const_cast<int**>(&dy), const_cast<int**>(&dx), &taps, &classes,
                  &height, &width, &total, &steps};
  status = cudaLaunchCooperativeKernel(reinterpret_cast<void*>(walk_persistent_kernel), grid, block, args, shared,
                                       stream);
  if (status == cudaSuccess && steps % 2 == 1) {
    status = cudaMemcpyAsync(x, scratch, total * sizeof(float), cudaMemcpyDeviceToDevice, stream);
  }
  return status;
}

cudaError_t random_walk_steps_f32(float* x, float* scratch, const float* w, const int* dy, const int* dx, int taps,
                                  int batch, int classes, int height, int width, long steps, cudaStream_t stream) {
  const long total = static_cast<long>(batch) * classes * height * width;
  if (total == 0 || steps == 0) return cudaSuccess;
  const unsigned int blocks = static_cast<unsigned int>((total + kThreads - 1) / kThreads);
  float* buffers[2] = {x, scratch};
  for (long s = 0; s < steps; ++s) {
    walk_step_kernel<<<blocks, kThreads, 0, stream>>>(buffers[s % 2], buffers[(s + 1) % 2], w, dy, dx, taps, classes,
                                                      height, width, total);
  }
  cudaError_t status = cudaGetLastError();
  if (status == cudaSuccess && steps % 2 == 1) {  // the result is in scratch: bring it back into x
    status = cudaMemcpyAsync(x, scratch, total * sizeof(float), cudaMemcpyDeviceToDevice, stream);
  }
  return status;
}

}  // namespace fastwsss
