// DN on the CPU.
//
// dn_mmdet::dn_b_inference: all of DN-B with running statistics in one
// call: the pooling pass, the SC-Module (FC1, sigmoid, grouped FC2), then
// normalisation, per-(sample, channel) affine and the following clamp in one
// read and one write of x.
// dn_mmdet::dn_b_train / dn_b_train_backward: DN-B with batch statistics and
// the clamp that follows it, the two halves of one autograd node: two passes
// over x forward (moments, output), two backward (sums of the gradient,
// input gradient), the SC-Module and its gradients in between.
// Small ops launched from Python cost ~10 us each, a few dozen a layer in
// training; here they cost next to nothing.
//
// Compiled by setup.py at install time, else on first use
// (dn_mmdet/ops/ext_loader.py); DynamicNorm2d computes the same with ATen
// ops where the kernel does not apply.
// Registered with torch's dispatcher as the ops dn_mmdet::* (no Python
// bindings: the library is loaded with torch.ops.load_library), so that the
// profiler, torch.compile and torch.export see each call as one op; their
// fake kernels and autograd are registered in dn_mmdet/ops/dn_ops.py.
// ATen and torch/library.h only: torch/extension.h adds the whole C++
// frontend (nn, optim, data), a third of the compile time, unused here.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

// Elements per parallel task: small maps are not worth a thread hand-off.
constexpr int64_t kGrainElements = 32768;

// Calls f(p) for each of x's (sample, channel) planes, split over threads in
// tasks of about kGrainElements values (whole planes: each plane's sums are
// the same on any number of threads).
template <typename F>
void for_each_plane(const at::Tensor& x, const F& f) {
  const int64_t planes = x.size(0) * x.size(1);
  const int64_t hw = x.size(2) * x.size(3);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(hw, 1));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) f(p);
  });
}

// The loops over one (sample, channel) plane are functions of their own,
// kept out of the parallel regions. Inlined into at::parallel_for, each was
// compiled twice, for one thread and inside the OpenMP region; gcc 12 did
// not vectorise one of grad_sums' copies (-fopt-info-vec), and its pass took
// 2-5x longer on two threads than on one.
#if defined(__GNUC__)
#define DN_PLANE_LOOP __attribute__((noinline))
#else
#define DN_PLANE_LOOP
#endif

// out = clamp(x * s + t, lo, hi) over one plane.
template <typename scalar_t>
DN_PLANE_LOOP void affine_clamp_plane(const scalar_t* x, int64_t hw, scalar_t s,
                                      scalar_t t, scalar_t lo, scalar_t hi,
                                      scalar_t* out) {
#pragma omp simd
  for (int64_t i = 0; i < hw; ++i) {
    scalar_t v = x[i] * s + t;
    // NaN passes through both comparisons, as in torch.clamp.
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
    out[i] = v;
  }
}

// The sum of one plane, in double: exact enough for any map size.
template <typename scalar_t>
DN_PLANE_LOOP double plane_sum(const scalar_t* x, int64_t hw) {
  double acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < hw; ++i) acc += x[i];
  return acc;
}

// The sums of x and x^2 over one plane, in double.
template <typename scalar_t>
DN_PLANE_LOOP void plane_sum_sq(const scalar_t* x, int64_t hw, double* sum,
                                double* sum_sq) {
  double acc = 0, acc2 = 0;
#pragma omp simd reduction(+ : acc, acc2)
  for (int64_t i = 0; i < hw; ++i) {
    const double v = x[i];
    acc += v;
    acc2 += v * v;
  }
  *sum = acc;
  *sum_sq = acc2;
}

// out = clamp(x * scale[n, c] + shift[n, c], lo, hi); scale and shift are
// contiguous (N, C).
template <typename scalar_t>
void affine_clamp_kernel(const at::Tensor& x, const scalar_t* scale,
                         const scalar_t* shift, scalar_t lo, scalar_t hi,
                         at::Tensor& out) {
  const int64_t hw = x.size(2) * x.size(3);
  const scalar_t* x_ptr = x.data_ptr<scalar_t>();
  scalar_t* o_ptr = out.data_ptr<scalar_t>();
  for_each_plane(x, [&](int64_t p) {
    affine_clamp_plane<scalar_t>(x_ptr + p * hw, hw, scale[p], shift[p], lo,
                                 hi, o_ptr + p * hw);
  });
}

template <typename scalar_t>
void normalize_act_kernel(const at::Tensor& x, const at::Tensor& alpha,
                          const at::Tensor& lam, const at::Tensor& mean,
                          const at::Tensor& var, double eps, double lo,
                          double hi, at::Tensor& out) {
  const int64_t n = x.size(0), channels = x.size(1);
  // alpha and lam are (N, C) or (1, C) with any strides: stride 0 over N
  // broadcasts DN-C's batch-shared affine.
  const int64_t a_sn = alpha.size(0) == 1 ? 0 : alpha.stride(0);
  const int64_t a_sc = alpha.stride(1);
  const int64_t l_sn = lam.size(0) == 1 ? 0 : lam.stride(0);
  const int64_t l_sc = lam.stride(1);
  const scalar_t* a_ptr = alpha.data_ptr<scalar_t>();
  const scalar_t* l_ptr = lam.data_ptr<scalar_t>();
  const scalar_t* m_ptr = mean.data_ptr<scalar_t>();
  const scalar_t* v_ptr = var.data_ptr<scalar_t>();
  std::vector<scalar_t> scale(n * channels), shift(n * channels);
  for (int64_t s = 0; s < n; ++s) {
    for (int64_t c = 0; c < channels; ++c) {
      const scalar_t sc = a_ptr[s * a_sn + c * a_sc] /
                          std::sqrt(v_ptr[c] + static_cast<scalar_t>(eps));
      scale[s * channels + c] = sc;
      shift[s * channels + c] = l_ptr[s * l_sn + c * l_sc] - m_ptr[c] * sc;
    }
  }
  affine_clamp_kernel<scalar_t>(x, scale.data(), shift.data(),
                                static_cast<scalar_t>(lo),
                                static_cast<scalar_t>(hi), out);
}

template <typename scalar_t>
void plane_means_kernel(const at::Tensor& x, at::Tensor& out) {
  const int64_t hw = x.size(2) * x.size(3);
  const scalar_t* x_ptr = x.data_ptr<scalar_t>();
  scalar_t* o_ptr = out.data_ptr<scalar_t>();
  for_each_plane(x, [&](int64_t p) {
    const double sum = plane_sum<scalar_t>(x_ptr + p * hw, hw);
    o_ptr[p] = static_cast<scalar_t>(sum / static_cast<double>(hw));
  });
}

// out[n, o] = sum_i h[n, g * in_g + i] * w[o, i], g = o / out_g: a grouped
// FC (groups = 1: a plain one) as a loop, cheaper than a BLAS call for the
// SC-Module's small products. Four rows of w at a time where they read the
// same inputs: four independent sums keep the FMA units busy, where one dot
// product waits on its own chain of additions (2-4x faster at the shapes of
// MobileNetV2's layers on an AVX2 core).
template <typename scalar_t>
void grouped_fc_kernel(const at::Tensor& h, const at::Tensor& w,
                       int64_t groups, at::Tensor& out) {
  const int64_t n = h.size(0), in_features = h.size(1);
  const int64_t out_features = w.size(0), in_g = w.size(1);
  const int64_t out_g = out_features / groups;
  const scalar_t* h_ptr = h.data_ptr<scalar_t>();
  const scalar_t* w_ptr = w.data_ptr<scalar_t>();
  scalar_t* o_ptr = out.data_ptr<scalar_t>();
  int64_t o = 0;
  for (; o < out_features; o += 4) {
    const int64_t group = o / out_g;
    if (o + 4 > out_features || (o + 3) / out_g != group) break;
    const scalar_t* w0 = w_ptr + o * in_g;
    const scalar_t* w1 = w0 + in_g;
    const scalar_t* w2 = w1 + in_g;
    const scalar_t* w3 = w2 + in_g;
    for (int64_t s = 0; s < n; ++s) {
      const scalar_t* hp = h_ptr + s * in_features + group * in_g;
      scalar_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
      for (int64_t i = 0; i < in_g; ++i) {
        const scalar_t v = hp[i];
        a0 += v * w0[i];
        a1 += v * w1[i];
        a2 += v * w2[i];
        a3 += v * w3[i];
      }
      scalar_t* op = o_ptr + s * out_features + o;
      op[0] = a0;
      op[1] = a1;
      op[2] = a2;
      op[3] = a3;
    }
  }
  // Rows left over, and every row where groups of fewer than four outputs
  // (or not aligned to four) break the blocks.
  for (; o < out_features; ++o) {
    const scalar_t* wp = w_ptr + o * in_g;
    for (int64_t s = 0; s < n; ++s) {
      const scalar_t* hp = h_ptr + s * in_features + (o / out_g) * in_g;
      scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < in_g; ++i) acc += hp[i] * wp[i];
      o_ptr[s * out_features + o] = acc;
    }
  }
}

// Per-(sample, channel) mean and E[x^2] of x, accumulated in double.
template <typename scalar_t>
void plane_moments_kernel(const at::Tensor& x, double* mean_out,
                          double* sq_out) {
  const int64_t hw = x.size(2) * x.size(3);
  const scalar_t* x_ptr = x.data_ptr<scalar_t>();
  for_each_plane(x, [&](int64_t p) {
    double sum, sum_sq;
    plane_sum_sq<scalar_t>(x_ptr + p * hw, hw, &sum, &sum_sq);
    mean_out[p] = sum / static_cast<double>(hw);
    sq_out[p] = sum_sq / static_cast<double>(hw);
  });
}

// The gradient g where the clamp [lo, hi] passes it at pre-activation v
// (inside the open interval, as torch's hardtanh_backward and ReLU's
// threshold_backward), else 0; NaN and inf gradients are zeroed too, as
// there. Written as a bit mask, not `c ? g : 0`: gcc does not vectorise that
// select inside a reduction into double, and the scalar loop, with a branch
// the data make unpredictable, cost 10-20x (the whole backward 10x BN's).
template <typename scalar_t>
inline scalar_t clamp_grad(scalar_t v, scalar_t lo, scalar_t hi, scalar_t g) {
  using bits_t = typename std::conditional<sizeof(scalar_t) == 4, uint32_t,
                                           uint64_t>::type;
  static_assert(sizeof(bits_t) == sizeof(scalar_t), "float or double");
  const bool passes = (v > lo) & (v < hi);
  bits_t bits;
  std::memcpy(&bits, &g, sizeof(g));
  bits &= -static_cast<bits_t>(passes);
  std::memcpy(&g, &bits, sizeof(g));
  return g;
}

// Over one plane: the sums of the gradient that reaches the affine (g
// where the clamp passes it at x * s + t) and of that gradient times x, in
// double.
template <typename scalar_t, bool kClamp>
DN_PLANE_LOOP void grad_sums_plane(const scalar_t* g, const scalar_t* x,
                                   int64_t hw, scalar_t s, scalar_t t,
                                   scalar_t lo, scalar_t hi, double* sum_g,
                                   double* sum_gx) {
  double acc = 0, accx = 0;
#pragma omp simd reduction(+ : acc, accx)
  for (int64_t i = 0; i < hw; ++i) {
    scalar_t gi = g[i];
    if (kClamp) gi = clamp_grad<scalar_t>(x[i] * s + t, lo, hi, gi);
    acc += gi;
    accx += static_cast<double>(gi) * x[i];
  }
  *sum_g = acc;
  *sum_gx = accx;
}

// dx = g' * s + x * cx + c0 over one plane, g' the gradient the clamp
// passes at x * s + t.
template <typename scalar_t, bool kClamp>
DN_PLANE_LOOP void input_grad_plane(const scalar_t* g, const scalar_t* x,
                                    int64_t hw, scalar_t s, scalar_t t,
                                    scalar_t lo, scalar_t hi, scalar_t cx,
                                    scalar_t c0, scalar_t* dx) {
#pragma omp simd
  for (int64_t i = 0; i < hw; ++i) {
    scalar_t gi = g[i];
    if (kClamp) gi = clamp_grad<scalar_t>(x[i] * s + t, lo, hi, gi);
    dx[i] = gi * s + x[i] * cx + c0;
  }
}

// Per-(sample, channel) sums of the gradient that reaches the affine
// (g where the clamp passes it) and of that gradient times x, in double.
template <typename scalar_t, bool kClamp>
void grad_sums_kernel(const at::Tensor& g, const at::Tensor& x,
                      const scalar_t* scale, const scalar_t* shift,
                      scalar_t lo, scalar_t hi, double* sum_g,
                      double* sum_gx) {
  const int64_t hw = x.size(2) * x.size(3);
  const scalar_t* g_ptr = g.data_ptr<scalar_t>();
  const scalar_t* x_ptr = x.data_ptr<scalar_t>();
  for_each_plane(x, [&](int64_t p) {
    grad_sums_plane<scalar_t, kClamp>(g_ptr + p * hw, x_ptr + p * hw, hw,
                                      scale[p], shift[p], lo, hi,
                                      sum_g + p, sum_gx + p);
  });
}

// dx = g' * scale[n, c] + x * coef_x[c] + shift_dx[n, c], g' the gradient
// the clamp passes.
template <typename scalar_t, bool kClamp>
void input_grad_kernel(const at::Tensor& g, const at::Tensor& x,
                       const scalar_t* scale, const scalar_t* shift,
                       scalar_t lo, scalar_t hi, const scalar_t* coef_x,
                       const scalar_t* shift_dx, at::Tensor& dx) {
  const int64_t channels = x.size(1);
  const int64_t hw = x.size(2) * x.size(3);
  const scalar_t* g_ptr = g.data_ptr<scalar_t>();
  const scalar_t* x_ptr = x.data_ptr<scalar_t>();
  scalar_t* d_ptr = dx.data_ptr<scalar_t>();
  for_each_plane(x, [&](int64_t p) {
    input_grad_plane<scalar_t, kClamp>(g_ptr + p * hw, x_ptr + p * hw, hw,
                                       scale[p], shift[p], lo, hi,
                                       coef_x[p % channels], shift_dx[p],
                                       d_ptr + p * hw);
  });
}

// Gradients of the grouped FC out = grouped_fc(h, w): d_h (N, in) and
// d_w (out, in_g) from d_out (N, out).
template <typename scalar_t>
void grouped_fc_backward_kernel(const at::Tensor& d_out,
                                const at::Tensor& h, const at::Tensor& w,
                                int64_t groups, at::Tensor& d_h,
                                at::Tensor& d_w) {
  const int64_t n = h.size(0), in_features = h.size(1);
  const int64_t out_features = w.size(0), in_g = w.size(1);
  const int64_t out_g = out_features / groups;
  const scalar_t* do_ptr = d_out.data_ptr<scalar_t>();
  const scalar_t* h_ptr = h.data_ptr<scalar_t>();
  const scalar_t* w_ptr = w.data_ptr<scalar_t>();
  scalar_t* dh_ptr = d_h.data_ptr<scalar_t>();
  scalar_t* dw_ptr = d_w.data_ptr<scalar_t>();
  std::fill(dh_ptr, dh_ptr + n * in_features, scalar_t(0));
  std::fill(dw_ptr, dw_ptr + out_features * in_g, scalar_t(0));
  for (int64_t s = 0; s < n; ++s) {
    for (int64_t o = 0; o < out_features; ++o) {
      const int64_t offset = s * in_features + (o / out_g) * in_g;
      const scalar_t d = do_ptr[s * out_features + o];
#pragma omp simd
      for (int64_t i = 0; i < in_g; ++i) {
        dh_ptr[offset + i] += d * w_ptr[o * in_g + i];
        dw_ptr[o * in_g + i] += d * h_ptr[offset + i];
      }
    }
  }
}

}  // namespace

namespace {

void check_sc_module(const char* op, const at::Tensor& x,
                     const at::Tensor& fc1_weight,
                     const at::Tensor& fc1_bias,
                     const at::Tensor& fc2_weight, int64_t fc2_groups,
                     const at::Tensor& base_scale,
                     const at::Tensor& base_shift) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.is_contiguous(), op,
              ": x must be a contiguous 4-D CPU tensor");
  const int64_t channels = x.size(1);
  TORCH_CHECK(fc1_weight.dim() == 2 && fc1_weight.size(1) == channels &&
                  fc1_bias.numel() == fc1_weight.size(0) &&
                  fc2_weight.dim() == 2 && fc2_weight.size(0) == 2 * channels &&
                  fc2_groups >= 1 &&
                  fc2_weight.size(1) * fc2_groups == fc1_weight.size(0) &&
                  base_scale.numel() == channels &&
                  base_shift.numel() == channels,
              op, ": SC-Module weights do not fit ", channels, " channels");
  for (const auto* t : {&fc1_weight, &fc1_bias, &fc2_weight, &base_scale,
                        &base_shift}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == x.scalar_type(),
                op, ": parameters must be CPU tensors of x's dtype");
  }
}

// Below this many multiply-adds an FC runs as a loop: a BLAS call's fixed
// cost (~5-10 us) is more than the whole product.
constexpr int64_t kSmallFC = 1 << 18;

// Whether an FC over n samples with weight w (grouped in groups) runs as
// BLAS products, forward and backward: plain FCs above kSmallFC; grouped
// ones always run as the loops.
inline bool fc_uses_blas(int64_t n, const at::Tensor& w, int64_t groups) {
  return groups == 1 && n * w.numel() > kSmallFC;
}

// FC1 and its sigmoid: (N, C) -> (N, h).
at::Tensor sc_fc1_sigmoid(const at::Tensor& pooled,
                             const at::Tensor& fc1_weight,
                             const at::Tensor& fc1_bias) {
  const int64_t n = pooled.size(0);
  const int64_t out_features = fc1_weight.size(0);
  if (fc_uses_blas(n, fc1_weight, 1)) {
    auto hidden = at::addmm(fc1_bias, pooled, fc1_weight.t());
    return hidden.sigmoid_();
  }
  auto hidden = at::empty({n, out_features}, pooled.options());
  const auto w = fc1_weight.contiguous(), b = fc1_bias.contiguous();
  const auto z = pooled.contiguous();
  AT_DISPATCH_FLOATING_TYPES(pooled.scalar_type(), "dn_sc_fc1", [&] {
    grouped_fc_kernel<scalar_t>(z, w, 1, hidden);
    const scalar_t* b_p = b.data_ptr<scalar_t>();
    scalar_t* h_p = hidden.data_ptr<scalar_t>();
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t j = 0; j < out_features; ++j) {
        scalar_t& v = h_p[s * out_features + j];
        v = scalar_t(1) / (scalar_t(1) + std::exp(-(v + b_p[j])));
      }
    }
  });
  return hidden;
}

// FC2 of the SC-Module: (N, h) -> (N, 2C).
at::Tensor sc_fc2(const at::Tensor& hidden, const at::Tensor& fc2_weight,
                     int64_t fc2_groups) {
  if (fc_uses_blas(hidden.size(0), fc2_weight, fc2_groups)) {
    return at::mm(hidden, fc2_weight.t());
  }
  auto delta = at::empty({hidden.size(0), fc2_weight.size(0)}, hidden.options());
  const auto w = fc2_weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES(hidden.scalar_type(), "dn_b_fc2", [&] {
    grouped_fc_kernel<scalar_t>(hidden, w, fc2_groups, delta);
  });
  return delta;
}

}  // namespace

// DN-B with statistics mean/var (C,): pooled = mean_hw(x) (N, C),
// delta = FC2(sigmoid(FC1(pooled))) (N, 2C), alpha = base_scale + delta[:, :C],
// lam = base_shift + delta[:, C:], then y = clamp((x - mean) / sqrt(var + eps)
// * alpha + lam, lo, hi) in one pass. Two matrix products are the only ATen
// calls: the (N, C)-sized rest runs as loops.
at::Tensor dn_b_inference(const at::Tensor& x, const at::Tensor& fc1_weight,
                             const at::Tensor& fc1_bias,
                             const at::Tensor& fc2_weight, int64_t fc2_groups,
                             const at::Tensor& base_scale,
                             const at::Tensor& base_shift,
                             const at::Tensor& mean, const at::Tensor& var,
                             double eps, double lo, double hi) {
  check_sc_module("dn_b_inference", x, fc1_weight, fc1_bias, fc2_weight,
                  fc2_groups, base_scale, base_shift);
  const int64_t n = x.size(0), channels = x.size(1);
  TORCH_CHECK(mean.numel() == channels && var.numel() == channels &&
                  mean.scalar_type() == x.scalar_type() &&
                  var.scalar_type() == x.scalar_type(),
              "dn_b_inference: mean and var must be (C,) tensors of x's dtype");
  auto pooled = at::empty({n, channels}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dn_b_pool", [&] {
    plane_means_kernel<scalar_t>(x, pooled);
  });
  const auto hidden = sc_fc1_sigmoid(pooled, fc1_weight, fc1_bias);
  // delta becomes (alpha, lam) in place: it is this call's own tensor.
  auto delta = sc_fc2(hidden, fc2_weight, fc2_groups).contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dn_b_affine", [&] {
    const auto bs = base_scale.contiguous(), bb = base_shift.contiguous();
    const scalar_t* bs_p = bs.data_ptr<scalar_t>();
    const scalar_t* bb_p = bb.data_ptr<scalar_t>();
    scalar_t* d_p = delta.data_ptr<scalar_t>();
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t c = 0; c < channels; ++c) {
        d_p[s * 2 * channels + c] += bs_p[c];
        d_p[s * 2 * channels + channels + c] += bb_p[c];
      }
    }
  });
  auto y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dn_b_inference", [&] {
    normalize_act_kernel<scalar_t>(x, delta.narrow(1, 0, channels),
                                   delta.narrow(1, channels, channels),
                                   mean.contiguous(), var.contiguous(), eps, lo,
                                   hi, y);
  });
  return y;
}

// DN-B's forward with batch statistics, clamp [lo, hi] included:
// moments per (sample, channel) -> batch mean and variance (law of total
// variance) -> SC-Module on the per-sample means -> y = clamp(x * scale +
// shift), scale = alpha * invstd, shift = lam - mean * scale.
// Returns y, the batch mean and biased variance (C,) (the caller updates the
// running statistics: the op mutates nothing) and what the backward needs:
// invstd (C,), pooled (N, C), hidden (N, h), alpha, scale and shift (N, C).
// The (N, C)-sized arithmetic runs as plain loops: as ATen ops it cost more
// than the passes over x at small maps.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor, at::Tensor, at::Tensor>
dn_b_train_forward(const at::Tensor& x, const at::Tensor& fc1_weight,
                   const at::Tensor& fc1_bias, const at::Tensor& fc2_weight,
                   int64_t fc2_groups, const at::Tensor& base_scale,
                   const at::Tensor& base_shift, double eps, double lo,
                   double hi) {
  check_sc_module("dn_b_train_forward", x, fc1_weight, fc1_bias, fc2_weight,
                  fc2_groups, base_scale, base_shift);
  const int64_t n = x.size(0), channels = x.size(1);
  const auto opts = x.options();
  std::vector<double> mean_nc(n * channels), sq_nc(n * channels);
  auto mean = at::empty({channels}, opts);
  auto var = at::empty({channels}, opts);
  auto invstd = at::empty({channels}, opts);
  auto pooled = at::empty({n, channels}, opts);
  auto alpha = at::empty({n, channels}, opts);
  auto scale = at::empty({n, channels}, opts);
  auto shift = at::empty({n, channels}, opts);
  auto y = at::empty_like(x);
  at::Tensor hidden;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dn_b_train_forward", [&] {
    plane_moments_kernel<scalar_t>(x, mean_nc.data(), sq_nc.data());
    scalar_t* mean_p = mean.data_ptr<scalar_t>();
    scalar_t* var_p = var.data_ptr<scalar_t>();
    scalar_t* invstd_p = invstd.data_ptr<scalar_t>();
    std::vector<double> mean64(channels), invstd64(channels);
    for (int64_t c = 0; c < channels; ++c) {
      // E over the batch of the per-sample E[x] and E[x^2]: equal counts.
      double m = 0, sq = 0;
      for (int64_t s = 0; s < n; ++s) {
        m += mean_nc[s * channels + c];
        sq += sq_nc[s * channels + c];
      }
      m /= static_cast<double>(n);
      const double v = std::max(sq / static_cast<double>(n) - m * m, 0.0);
      mean64[c] = m;
      invstd64[c] = 1.0 / std::sqrt(v + eps);
      mean_p[c] = static_cast<scalar_t>(m);
      var_p[c] = static_cast<scalar_t>(v);
      invstd_p[c] = static_cast<scalar_t>(invstd64[c]);
    }
    scalar_t* pooled_p = pooled.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n * channels; ++i) {
      pooled_p[i] = static_cast<scalar_t>(mean_nc[i]);
    }
    hidden = sc_fc1_sigmoid(pooled, fc1_weight, fc1_bias);
    const auto delta = sc_fc2(hidden, fc2_weight, fc2_groups).contiguous();
    const scalar_t* delta_p = delta.data_ptr<scalar_t>();
    const auto base_scale_c = base_scale.contiguous();
    const auto base_shift_c = base_shift.contiguous();
    const scalar_t* bs_p = base_scale_c.data_ptr<scalar_t>();
    const scalar_t* bb_p = base_shift_c.data_ptr<scalar_t>();
    scalar_t* alpha_p = alpha.data_ptr<scalar_t>();
    scalar_t* scale_p = scale.data_ptr<scalar_t>();
    scalar_t* shift_p = shift.data_ptr<scalar_t>();
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t i = s * channels + c;
        const scalar_t a = delta_p[s * 2 * channels + c] + bs_p[c];
        const scalar_t l = delta_p[s * 2 * channels + channels + c] + bb_p[c];
        const double sc = static_cast<double>(a) * invstd64[c];
        alpha_p[i] = a;
        scale_p[i] = static_cast<scalar_t>(sc);
        shift_p[i] = static_cast<scalar_t>(l - mean64[c] * sc);
      }
    }
    affine_clamp_kernel<scalar_t>(x, scale_p, shift_p, static_cast<scalar_t>(lo),
                                  static_cast<scalar_t>(hi), y);
  });
  return {y, mean, var, invstd, pooled, hidden, alpha, scale, shift};
}

// The backward of dn_b_train_forward. grad_y: the gradient of y. Returns
// the gradients of x, FC1's weight and bias and FC2's weight.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dn_b_train_backward(
    const at::Tensor& grad_y, const at::Tensor& x,
    const at::Tensor& mean, const at::Tensor& invstd,
    const at::Tensor& pooled, const at::Tensor& hidden,
    const at::Tensor& alpha, const at::Tensor& scale,
    const at::Tensor& shift, const at::Tensor& fc1_weight,
    const at::Tensor& fc2_weight, int64_t fc2_groups, double lo,
    double hi) {
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.is_contiguous() &&
                  grad_y.scalar_type() == x.scalar_type(),
              "dn_b_train_backward: grad_y must be contiguous, of x's shape "
              "and dtype");
  const int64_t n = x.size(0), channels = x.size(1);
  const int64_t hw = x.size(2) * x.size(3);
  const bool clamp = std::isfinite(lo) || std::isfinite(hi);
  const auto opts = x.options();
  auto d_delta = at::empty({n, 2 * channels}, opts);
  auto grad_x = at::empty_like(x);
  at::Tensor d_fc1, d_fc1_bias, d_fc2;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dn_b_train_backward", [&] {
    const scalar_t low = static_cast<scalar_t>(lo);
    const scalar_t high = static_cast<scalar_t>(hi);
    const scalar_t* scale_p = scale.data_ptr<scalar_t>();
    const scalar_t* shift_p = shift.data_ptr<scalar_t>();
    const scalar_t* mean_p = mean.data_ptr<scalar_t>();
    const scalar_t* invstd_p = invstd.data_ptr<scalar_t>();
    const scalar_t* alpha_p = alpha.data_ptr<scalar_t>();
    std::vector<double> sum_g(n * channels), sum_gx(n * channels);
    if (clamp) {
      grad_sums_kernel<scalar_t, true>(grad_y, x, scale_p, shift_p, low, high,
                                       sum_g.data(), sum_gx.data());
    } else {
      grad_sums_kernel<scalar_t, false>(grad_y, x, scale_p, shift_p, low, high,
                                        sum_g.data(), sum_gx.data());
    }
    // d alpha = sum g' x^ and d lambda = sum g', with x^ = (x - mean) *
    // invstd; and the batch means of alpha g' and alpha g' x^ per channel.
    scalar_t* d_delta_p = d_delta.data_ptr<scalar_t>();
    std::vector<double> mean_dxhat(channels, 0.0), mean_dxhat_xhat(channels, 0.0);
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t i = s * channels + c;
        const double gxhat = (sum_gx[i] - sum_g[i] * mean_p[c]) * invstd_p[c];
        d_delta_p[s * 2 * channels + c] = static_cast<scalar_t>(gxhat);
        d_delta_p[s * 2 * channels + channels + c] = static_cast<scalar_t>(sum_g[i]);
        mean_dxhat[c] += alpha_p[i] * sum_g[i];
        mean_dxhat_xhat[c] += alpha_p[i] * gxhat;
      }
    }
    at::Tensor d_hidden;
    if (fc_uses_blas(n, fc2_weight, fc2_groups)) {
      d_hidden = at::mm(d_delta, fc2_weight);
      d_fc2 = at::mm(d_delta.t(), hidden);
    } else {
      d_hidden = at::empty_like(hidden);
      d_fc2 = at::empty({fc2_weight.size(0), fc2_weight.size(1)}, opts);
      grouped_fc_backward_kernel<scalar_t>(d_delta, hidden,
                                           fc2_weight.contiguous(), fc2_groups,
                                           d_hidden, d_fc2);
    }
    // Through the sigmoid: d_pre = d_hidden * h * (1 - h), in place.
    d_hidden = d_hidden.contiguous();
    scalar_t* d_pre_p = d_hidden.data_ptr<scalar_t>();
    const auto hidden_c = hidden.contiguous();
    const scalar_t* h_p = hidden_c.data_ptr<scalar_t>();
    const int64_t h_features = hidden.size(1);
    d_fc1_bias = at::zeros({h_features}, opts);
    scalar_t* db_p = d_fc1_bias.data_ptr<scalar_t>();
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t j = 0; j < h_features; ++j) {
        const int64_t i = s * h_features + j;
        d_pre_p[i] *= h_p[i] * (scalar_t(1) - h_p[i]);
        db_p[j] += d_pre_p[i];
      }
    }
    at::Tensor d_pooled;
    if (fc_uses_blas(n, fc1_weight, 1)) {
      d_fc1 = at::mm(d_hidden.t(), pooled);
      d_pooled = at::mm(d_hidden, fc1_weight).contiguous();
    } else {
      d_pooled = at::empty_like(pooled);
      d_fc1 = at::empty({fc1_weight.size(0), fc1_weight.size(1)}, opts);
      grouped_fc_backward_kernel<scalar_t>(d_hidden, pooled.contiguous(),
                                           fc1_weight.contiguous(), 1,
                                           d_pooled, d_fc1);
    }
    const scalar_t* d_pooled_p = d_pooled.data_ptr<scalar_t>();
    // BN's backward with a per-sample gamma alpha, plus the pooling's:
    // dx = invstd (alpha g' - E[alpha g'] - x^ E[alpha g' x^]) + d_pooled / HW
    //    = g' scale + x coef_x + shift_dx
    const double count = static_cast<double>(n * hw);
    std::vector<scalar_t> coef_x(channels), shift_dx(n * channels);
    std::vector<double> coef_x64(channels);
    for (int64_t c = 0; c < channels; ++c) {
      const double is = invstd_p[c];
      coef_x64[c] = -is * is * mean_dxhat_xhat[c] / count;
      coef_x[c] = static_cast<scalar_t>(coef_x64[c]);
    }
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t i = s * channels + c;
        shift_dx[i] = static_cast<scalar_t>(
            static_cast<double>(d_pooled_p[i]) / static_cast<double>(hw) -
            static_cast<double>(invstd_p[c]) * mean_dxhat[c] / count -
            coef_x64[c] * mean_p[c]);
      }
    }
    if (clamp) {
      input_grad_kernel<scalar_t, true>(grad_y, x, scale_p, shift_p, low, high,
                                        coef_x.data(), shift_dx.data(), grad_x);
    } else {
      input_grad_kernel<scalar_t, false>(grad_y, x, scale_p, shift_p, low, high,
                                         coef_x.data(), shift_dx.data(), grad_x);
    }
  });
  return {grad_x, d_fc1, d_fc1_bias, d_fc2};
}

TORCH_LIBRARY_FRAGMENT(dn_mmdet, m) {
  m.def("dn_b_inference(Tensor x, Tensor fc1_weight, Tensor fc1_bias, "
        "Tensor fc2_weight, int fc2_groups, Tensor base_scale, "
        "Tensor base_shift, Tensor mean, Tensor var, float eps, float lo, "
        "float hi) -> Tensor");
  m.def("dn_b_train(Tensor x, Tensor fc1_weight, Tensor fc1_bias, "
        "Tensor fc2_weight, int fc2_groups, Tensor base_scale, "
        "Tensor base_shift, float eps, float lo, float hi) -> (Tensor y, "
        "Tensor mean, Tensor var, Tensor invstd, Tensor pooled, "
        "Tensor hidden, Tensor alpha, Tensor scale, Tensor shift)");
  m.def("dn_b_train_backward(Tensor grad_y, Tensor x, Tensor mean, "
        "Tensor invstd, Tensor pooled, Tensor hidden, Tensor alpha, "
        "Tensor scale, Tensor shift, Tensor fc1_weight, Tensor fc2_weight, "
        "int fc2_groups, float lo, float hi) -> (Tensor grad_x, "
        "Tensor grad_fc1_weight, Tensor grad_fc1_bias, "
        "Tensor grad_fc2_weight)");
}

TORCH_LIBRARY_IMPL(dn_mmdet, CPU, m) {
  m.impl("dn_b_inference", &dn_b_inference);
  m.impl("dn_b_train", &dn_b_train_forward);
  m.impl("dn_b_train_backward", &dn_b_train_backward);
}
