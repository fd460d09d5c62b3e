// Launchers of the hand-written CUDA kernels. Plain pointers and a stream only: no torch headers here, so
// the .cu files compile in seconds; csrc/bindings.cpp checks the tensors and calls these.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace fastwsss {

// out[p, i] = relu(x[p, i]) / (max_i relu(x[p, i]) + eps) for contiguous (planes, n) maps of T (float, __half,
// __nv_bfloat16), computed in fp32 with IEEE division (the reference's operations), written back as T. A plane
// holding a NaN gives NaN, as in the reference. `partial`: scratch of cam_norm_partials(planes, n, sms) floats.
template <typename T>
cudaError_t cam_norm(const T* x, T* out, float* partial, long planes, long n, float eps, int sms,
                     cudaStream_t stream);

// Chunks per plane (1: one fused launch; more: a partial-maxima launch, then a scaling launch) and the
// scratch floats they need: enough blocks to fill `sms` multiprocessors when there are few, large planes.
int cam_norm_chunks(long planes, long n, int sms);

// Tap offsets of the walk, passed to the kernels by value (no device table, no copy per call).
constexpr int kMaxTaps = 255;
struct WalkTaps {
  int count;
  int reach;  // max |dy|, |dx|: the halo of a tile
  int dy[kMaxTaps];
  int dx[kMaxTaps];
};

// `steps` random-walk steps in gather form (kernels/random_walk.py: transition_taps / apply_taps):
//   x'[b, k, j] = sum_t w[b, t, j] * x[b, k, j + offset_t]  (x read as 0 outside the h x w image)
// x: (B, K, h, w) fp32, contiguous, overwritten with the result; scratch: same size; w: (B, T, h, w).
// One launch per step.
cudaError_t random_walk_steps_f32(float* x, float* scratch, const float* w, const WalkTaps& taps, int batch,
                                  int classes, int height, int width, long steps, cudaStream_t stream);

// The same steps in ONE cooperative launch with a grid-wide barrier between steps. Returns an error (and
// launches nothing) where the device cannot run it: the caller then falls back to the per-step launcher.
cudaError_t random_walk_steps_persistent_f32(float* x, float* scratch, const float* w, const WalkTaps& taps,
                                             int batch, int classes, int height, int width, long steps,
                                             cudaStream_t stream);

}  // namespace fastwsss
