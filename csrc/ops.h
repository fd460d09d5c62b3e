// Launchers of the hand-written CUDA kernels. Plain pointers and a stream only: no torch headers here, so
// the .cu files compile in seconds; csrc/bindings.cpp checks the tensors and calls these.
#pragma once

#include <cuda_runtime.h>

namespace fastwsss {

// out[b, k, p] = relu(x[b, k, p]) / (max_p relu(x[b, k, p]) + eps) for contiguous (B*K, n) fp32 planes.
cudaError_t cam_norm_f32(const float* x, float* out, long planes, long n, float eps, cudaStream_t stream);

// `steps` random-walk steps in gather form (kernels/random_walk.py: transition_taps / apply_taps):
//   x'[b, k, j] = sum_t w[b, t, j] * x[b, k, j + offset_t]  (x read as 0 outside the h x w image)
// x: (B, K, h, w) fp32, contiguous, overwritten with the result; scratch: same size; w: (B, T, h, w);
// dy, dx: T offsets in device memory.
cudaError_t random_walk_steps_f32(float* x, float* scratch, const float* w, const int* dy, const int* dx, int taps,
                                  int batch, int classes, int height, int width, long steps, cudaStream_t stream);

// The same steps in ONE cooperative launch with a grid-wide barrier between steps. Returns
// cudaErrorNotSupported where the device cannot launch cooperatively (the caller then uses the per-step
// launcher above).
cudaError_t random_walk_steps_persistent_f32(float* x, float* scratch, const float* w, const int* dy, const int* dx,
                                             int taps, int batch, int classes, int height, int width, long steps,
                                             cudaStream_t stream);

}  // namespace fastwsss
