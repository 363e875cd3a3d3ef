// The sampling convention of multi-scale deformable attention, shared by the CPU and CUDA kernels
// so that both read exactly the same pixels with exactly the same weights.
//
// A normalised location (x, y) in a level of H x W pixels maps to the continuous pixel coordinate
// (x * W - 0.5, y * H - 0.5): pixel centres sit at (i + 0.5) / W, as in
// grid_sample(align_corners=False). The value there is the bilinear blend of the four surrounding
// pixels; a pixel off the map contributes zero (grid_sample's padding_mode="zeros").
#pragma once

#include <c10/macros/Macros.h>

#include <math.h>

#include <cstdint>

namespace clusterformer {

C10_HOST_DEVICE inline float floor_of(float v) {
  return floorf(v);
}
C10_HOST_DEVICE inline double floor_of(double v) {
  return floor(v);
}

// The four pixels around one sampling location. For each: whether it lies on the map, its token
// index relative to the level's first token (row * W + col), its bilinear weight and the
// derivatives of that weight w.r.t. the normalised x and y.
template <typename T>
struct BilinearCorners {
  bool valid[4];
  int64_t token[4];
  T weight[4];
  T dweight_dx[4];
  T dweight_dy[4];
};

template <typename T>
C10_HOST_DEVICE inline void set_corner(
    BilinearCorners<T>& c, int k, int64_t row, int64_t col, int64_t H, int64_t W, T weight,
    T dweight_dx, T dweight_dy) {
  c.valid[k] = row >= 0 && row < H && col >= 0 && col < W;
  c.token[k] = row * W + col;
  c.weight[k] = weight;
  c.dweight_dx[k] = dweight_dx;
  c.dweight_dy[k] = dweight_dy;
}

template <typename T>
C10_HOST_DEVICE inline void bilinear_corners(
    T x, T y, int64_t H, int64_t W, BilinearCorners<T>& c) {
  const T Wf = static_cast<T>(W), Hf = static_cast<T>(H);
  const T px = x * Wf - T(0.5);
  const T py = y * Hf - T(0.5);
  // Outside [-1, W] x [-1, H] no corner is on the map. Written so that NaN fails the test; it also
  // keeps the float -> integer conversions below in range for any input.
  if (!(px >= T(-1) && px <= Wf && py >= T(-1) && py <= Hf)) {
    c.valid[0] = c.valid[1] = c.valid[2] = c.valid[3] = false;
    return;
  }
  const T fx = floor_of(px), fy = floor_of(py);
  const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
  const T lx = px - fx, ly = py - fy;  // offsets from the top-left corner, in [0, 1)
  const T hx = T(1) - lx, hy = T(1) - ly;
  // Weight derivatives in pixel units, times d(px)/dx = W and d(py)/dy = H.
  set_corner(c, 0, y0, x0, H, W, hy * hx, -hy * Wf, -hx * Hf);
  set_corner(c, 1, y0, x0 + 1, H, W, hy * lx, hy * Wf, -lx * Hf);
  set_corner(c, 2, y0 + 1, x0, H, W, ly * hx, -ly * Wf, hx * Hf);
  set_corner(c, 3, y0 + 1, x0 + 1, H, W, ly * lx, ly * Wf, lx * Hf);
}

// Whether level (H, W) starting at token `start` lies inside the S tokens of value.
C10_HOST_DEVICE inline bool level_fits(int64_t H, int64_t W, int64_t start, int64_t S) {
  return H >= 0 && W >= 0 && start >= 0 && start + H * W <= S;
}

}  // namespace clusterformer
