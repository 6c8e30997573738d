// Pillow's bilinear affine resample (Image.transform(..., AFFINE, resample=BILINEAR, fillcolor))
// for an axis-aligned affine (no rotation or shear), bit for bit: the arithmetic of Pillow's
// src/libImaging/Geometry.c (affine_transform, BILINEAR_HEAD/BODY, bilinear_filter8 and
// bilinear_filter32RGB) in the same double-precision order. Build with -ffp-contract=off (no fused
// multiply-adds: Pillow's x86-64 wheels have none) and without -ffast-math.
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// Pillow's FLOOR: a truncating cast for non-negative values.
inline int pil_floor(double x) { return x < 0.0 ? static_cast<int>(std::floor(x)) : static_cast<int>(x); }
inline int64_t clip(int64_t v, int64_t size) { return v < 0 ? 0 : (v < size ? v : size - 1); }

// One output row of a row inside the image; `second`: the row below exists (else v2 = v1).
template <int C, bool second>
void row_pass(const uint8_t* row0, const uint8_t* row1, const int64_t* c0, const int64_t* c1,
              const double* dxs, const char* inside, double dy, const uint8_t* fill, uint8_t* orow,
              int64_t out_w, bool flip) {
  for (int64_t x = 0; x < out_w; ++x) {
    uint8_t* o = orow + (flip ? out_w - 1 - x : x) * C;
    if (!inside[x]) {
      for (int b = 0; b < C; ++b) o[b] = fill[b];
      continue;
    }
    const double dx = dxs[x];
    const uint8_t* p0 = row0 + c0[x];
    const uint8_t* p1 = row0 + c1[x];
    const uint8_t* q0 = row1 + c0[x];
    const uint8_t* q1 = row1 + c1[x];
    for (int b = 0; b < C; ++b) {
      double v1 = p0[b] + (p1[b] - p0[b]) * dx;
      double v2 = second ? q0[b] + (q1[b] - q0[b]) * dx : v1;
      v1 = v1 + (v2 - v1) * dy;
      o[b] = static_cast<uint8_t>(v1);
    }
  }
}

template <int C>
void resample(const uint8_t* src, int64_t H, int64_t W, int64_t row_stride, int64_t pixel_stride,
              double a0, double a2, double a4, double a5, const uint8_t* fill, uint8_t* out,
              int64_t out_h, int64_t out_w, int64_t channels, bool flip) {
  // Per output column: inside the image, the two source columns and the weight.
  std::vector<int64_t> c0(out_w), c1(out_w);
  std::vector<double> dxs(out_w);
  std::vector<char> inside(out_w);
  for (int64_t x = 0; x < out_w; ++x) {
    double xin = a0 * (x + 0.5) + a2;  // a1 * (y + 0.5) = +0.0 adds exactly nothing
    inside[x] = !(xin < 0.0 || xin >= static_cast<double>(W));
    xin -= 0.5;
    int xi = pil_floor(xin);
    dxs[x] = xin - xi;
    c0[x] = clip(xi, W) * pixel_stride;
    c1[x] = clip(static_cast<int64_t>(xi) + 1, W) * pixel_stride;
  }
  for (int64_t y = 0; y < out_h; ++y) {
    uint8_t* orow = out + y * out_w * channels;
    double yin = a4 * (y + 0.5) + a5;
    bool row_inside = !(yin < 0.0 || yin >= static_cast<double>(H));
    yin -= 0.5;
    int yi = pil_floor(yin);
    double dy = yin - yi;
    const uint8_t* row0 = src + clip(yi, H) * row_stride;
    bool second = static_cast<int64_t>(yi) + 1 >= 0 && static_cast<int64_t>(yi) + 1 < H;
    const uint8_t* row1 = second ? src + (static_cast<int64_t>(yi) + 1) * row_stride : row0;
    if (!row_inside) {
      for (int64_t x = 0; x < out_w; ++x)
        for (int b = 0; b < C; ++b) orow[x * channels + b] = fill[b];
      continue;
    }
    if (second) {
      row_pass<C, true>(row0, row1, c0.data(), c1.data(), dxs.data(), inside.data(), dy, fill,
                        orow, out_w, flip);
    } else {
      row_pass<C, false>(row0, row1, c0.data(), c1.data(), dxs.data(), inside.data(), dy, fill,
                         orow, out_w, flip);
    }
  }
}

}  // namespace

extern "C" int igc_affine_bilinear(const uint8_t* src, int64_t H, int64_t W, int64_t row_stride,
                                   int64_t pixel_stride, int64_t channels, double a0, double a2,
                                   double a4, double a5, const uint8_t* fill, uint8_t* out,
                                   int64_t out_h, int64_t out_w, int flip) {
  if (H <= 0 || W <= 0 || out_h < 0 || out_w < 0) return 1;
  switch (channels) {
    case 1: resample<1>(src, H, W, row_stride, pixel_stride, a0, a2, a4, a5, fill, out, out_h, out_w, 1, flip); return 0;
    case 3: resample<3>(src, H, W, row_stride, pixel_stride, a0, a2, a4, a5, fill, out, out_h, out_w, 3, flip); return 0;
    default: return 2;
  }
}
