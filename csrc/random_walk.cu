// Random-walk steps in gather form, two ping-pong buffers. A block owns a 32 x 8 tile of one (image, class)
// plane: it stages the tile and its halo (the taps' reach on every side, zeros outside the image) in shared
// memory, then each thread sums its pixel's taps from there, so a step reads each value about 2.5 times
// from L2 instead of once per tap (69 at radius 5). Tile coordinates come from 32-bit block indices: no
// 64-bit division per element. The tap offsets travel by value in the kernel parameters (no device table).
// Two launch schemes:
//  - per step: one launch per step (2^exp_times launches);
//  - persistent: ONE cooperative launch whose blocks loop over the tiles and the steps with a grid-wide
//    barrier between steps. Values another block wrote since the last barrier are read with __ldcg (L2; the
//    L1 of this multiprocessor may hold a stale copy); only the halo loads touch them.
// The weights (B, T, h, w) are shared by the K classes of an image and read through the read-only path.
#include <cooperative_groups.h>

#include "ops.h"

namespace fastwsss {
namespace {

constexpr int kTileX = 32;
constexpr int kTileY = 8;
constexpr int kThreads = kTileX * kTileY;

struct Grid {
  int classes, height, width, tiles_x, tiles_y;
  __host__ __device__ int tiles() const { return tiles_x * tiles_y; }
};

// One tile of one step: plane `plane` (b * classes + k), tile (tile_y, tile_x). `stage` is the block's
// shared memory ((kTileY + 2 reach) x (kTileX + 2 reach) floats).
template <bool kCoherent>
__device__ __forceinline__ void walk_tile(const float* src, float* dst, const float* __restrict__ w,
                                          const WalkTaps& taps, const Grid& g, int plane, int tile_y, int tile_x,
                                          float* stage) {
  const int reach = taps.reach;
  const int stage_w = kTileX + 2 * reach;
  const int stage_h = kTileY + 2 * reach;
  const long n = static_cast<long>(g.height) * g.width;
  const float* plane_src = src + static_cast<long>(plane) * n;
  const int y0 = tile_y * kTileY - reach;
  const int x0 = tile_x * kTileX - reach;
  const int tid = threadIdx.y * kTileX + threadIdx.x;
  for (int i = tid; i < stage_h * stage_w; i += kThreads) {
    const int sy = i / stage_w;
    const int sx = i - sy * stage_w;
    const int y = y0 + sy;
    const int x = x0 + sx;
    float v = 0.0f;
    if (y >= 0 && y < g.height && x >= 0 && x < g.width) {
      const float* p = plane_src + static_cast<long>(y) * g.width + x;
      v = kCoherent ? __ldcg(p) : __ldg(p);
    }
    stage[i] = v;
  }
  __syncthreads();
  const int y = tile_y * kTileY + threadIdx.y;
  const int x = tile_x * kTileX + threadIdx.x;
  if (y < g.height && x < g.width) {
    const long pixel = static_cast<long>(y) * g.width + x;
    const float* weights = w + static_cast<long>(plane / g.classes) * taps.count * n + pixel;
    const float* center = stage + (threadIdx.y + reach) * stage_w + threadIdx.x + reach;
    float acc = 0.0f;
    for (int t = 0; t < taps.count; ++t) {
      acc = fmaf(__ldg(weights + t * n), center[taps.dy[t] * stage_w + taps.dx[t]], acc);
    }
    dst[static_cast<long>(plane) * n + pixel] = acc;
  }
  __syncthreads();  // the stage is refilled by the block's next tile
}

__global__ void __launch_bounds__(kThreads) walk_step_kernel(const float* __restrict__ src, float* __restrict__ dst,
                                                             const float* __restrict__ w, const WalkTaps taps, Grid g) {
  extern __shared__ float stage[];
  walk_tile<false>(src, dst, w, taps, g, blockIdx.z, blockIdx.y, blockIdx.x, stage);
}

__global__ void __launch_bounds__(kThreads) walk_persistent_kernel(float* a, float* b, const float* __restrict__ w,
                                                                   const WalkTaps taps, Grid g, int planes,
                                                                   long steps) {
  extern __shared__ float stage[];
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  const int tiles = g.tiles();
  const int work = planes * tiles;
  for (long s = 0; s < steps; ++s) {
    const float* src = (s % 2 == 0) ? a : b;
    float* dst = (s % 2 == 0) ? b : a;
    for (int item = blockIdx.x; item < work; item += gridDim.x) {
      const int plane = item / tiles;
      const int tile = item - plane * tiles;
      const int tile_y = tile / g.tiles_x;
      walk_tile<true>(src, dst, w, taps, g, plane, tile_y, tile - tile_y * g.tiles_x, stage);
    }
    grid.sync();
  }
}

Grid make_grid(int classes, int height, int width) {
  return Grid{classes, height, width, (width + kTileX - 1) / kTileX, (height + kTileY - 1) / kTileY};
}

size_t stage_bytes(const WalkTaps& taps) {
  return static_cast<size_t>(kTileY + 2 * taps.reach) * (kTileX + 2 * taps.reach) * sizeof(float);
}

cudaError_t finish(float* x, float* scratch, long total, long steps, cudaStream_t stream) {
  if (steps % 2 == 0) return cudaSuccess;  // the result is in scratch: bring it back into x
  return cudaMemcpyAsync(x, scratch, total * sizeof(float), cudaMemcpyDeviceToDevice, stream);
}

}  // namespace

cudaError_t random_walk_steps_persistent_f32(float* x, float* scratch, const float* w, const WalkTaps& taps,
                                             int batch, int classes, int height, int width, long steps,
                                             cudaStream_t stream) {
  const long total = static_cast<long>(batch) * classes * height * width;
  if (total == 0 || steps == 0) return cudaSuccess;
  int device = 0;
  int cooperative = 0;
  int sms = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status == cudaSuccess) status = cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device);
  if (status == cudaSuccess) status = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (status != cudaSuccess) return status;
  if (!cooperative) return cudaErrorNotSupported;
  const size_t shared = stage_bytes(taps);
  int per_sm = 0;
  status = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, walk_persistent_kernel, kThreads, shared);
  if (status != cudaSuccess) return status;
  if (per_sm < 1) return cudaErrorNotSupported;
  Grid g = make_grid(classes, height, width);
  int planes = batch * classes;
  const long work = static_cast<long>(planes) * g.tiles();
  if (work > 0x7fffffffL) return cudaErrorInvalidValue;
  const long resident = static_cast<long>(per_sm) * sms;
  dim3 grid(static_cast<unsigned int>(work < resident ? work : resident));
  float* a = x;
  float* b = scratch;
  WalkTaps by_value = taps;
  void* args[] = {&a, &b, const_cast<float**>(&w), &by_value, &g, &planes, &steps};
  status = cudaLaunchCooperativeKernel(reinterpret_cast<void*>(walk_persistent_kernel), grid, dim3(kTileX, kTileY), args,
                                       shared, stream);
  return status == cudaSuccess ? finish(x, scratch, total, steps, stream) : status;
}

cudaError_t random_walk_steps_f32(float* x, float* scratch, const float* w, const WalkTaps& taps, int batch,
                                  int classes, int height, int width, long steps, cudaStream_t stream) {
  const long total = static_cast<long>(batch) * classes * height * width;
  if (total == 0 || steps == 0) return cudaSuccess;
  const long planes = static_cast<long>(batch) * classes;
  if (planes > 65535) return cudaErrorInvalidValue;  // grid.z
  const Grid g = make_grid(classes, height, width);
  const dim3 grid(g.tiles_x, g.tiles_y, static_cast<unsigned int>(planes));
  const size_t shared = stage_bytes(taps);
  float* buffers[2] = {x, scratch};
  for (long s = 0; s < steps; ++s) {
    walk_step_kernel<<<grid, dim3(kTileX, kTileY), shared, stream>>>(buffers[s % 2], buffers[(s + 1) % 2], w, taps, g);
  }
  const cudaError_t status = cudaGetLastError();
  return status == cudaSuccess ? finish(x, scratch, total, steps, stream) : status;
}

}  // namespace fastwsss
