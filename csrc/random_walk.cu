// Random-walk steps in gather form: one thread per (image, class, pixel), one launch per step with two
// ping-pong buffers. The tap weights (B, T, h, w) are shared by the K classes of an image and stay in L2;
// the offsets live in constant-size device arrays read through the read-only cache.
#include "ops.h"

namespace fastwsss {
namespace {

constexpr int kThreads = 256;

__global__ void walk_step_kernel(const float* __restrict__ src, float* __restrict__ dst, const float* __restrict__ w,
                                 const int* __restrict__ dy, const int* __restrict__ dx, int taps, int classes,
                                 int height, int width, long total) {
  const long index = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= total) return;
  const long n = static_cast<long>(height) * width;
  const long pixel = index % n;
  const long plane = index / n;            // b * classes + k
  const long image = plane / classes;      // b
  const int y = static_cast<int>(pixel / width);
  const int x = static_cast<int>(pixel % width);
  const float* plane_src = src + plane * n;
  const float* weights = w + image * taps * n + pixel;
  float acc = 0.0f;
  for (int t = 0; t < taps; ++t) {
    const int yy = y + __ldg(dy + t);
    const int xx = x + __ldg(dx + t);
    if (yy >= 0 && yy < height && xx >= 0 && xx < width) {
      acc = fmaf(__ldg(weights + t * n), __ldg(plane_src + static_cast<long>(yy) * width + xx), acc);
    }
  }
  dst[index] = acc;
}

}  // namespace

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
