// DN's inference on the CPU.
//
// normalize_act: normalisation, per-(sample, channel) affine and the
// following clamp activation, one read and one write of x.
// dn_b_inference: all of DN-B in one call: the pooling pass, the SC-Module
// (FC1, sigmoid, grouped FC2) and normalize_act. Small ops launched from
// Python cost ~10 us each, a dozen a layer; here they cost next to nothing.
//
// Compiled by setup.py at install time, else on first use
// (dn_mmdet/ops/ext_loader.py); DynamicNorm2d computes the same with ATen
// ops where the kernel does not apply.
// ATen and the Python bindings only: torch/extension.h adds the whole C++
// frontend (nn, optim, data), a third of the compile time, unused here.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/python.h>

#include <algorithm>
#include <cmath>

namespace {

// Elements per parallel task: small maps are not worth a thread hand-off.
constexpr int64_t kGrainElements = 32768;

template <typename scalar_t>
void normalize_act_kernel(const torch::Tensor& x, const torch::Tensor& alpha,
                          const torch::Tensor& lam, const torch::Tensor& mean,
                          const torch::Tensor& var, double eps, double lo,
                          double hi, torch::Tensor& out) {
  const int64_t channels = x.size(1);
  const int64_t planes = x.size(0) * channels;
  const int64_t hw = x.size(2) * x.size(3);
  // alpha and lam are (N, C) or (1, C) with any strides: stride 0 over N
  // broadcasts DN-C's batch-shared affine.
  const int64_t a_sn = alpha.size(0) == 1 ? 0 : alpha.stride(0);
  const int64_t a_sc = alpha.stride(1);
  const int64_t l_sn = lam.size(0) == 1 ? 0 : lam.stride(0);
  const int64_t l_sc = lam.stride(1);
  const scalar_t* x_ptr = x.data_ptr<scalar_t>();
  const scalar_t* a_ptr = alpha.data_ptr<scalar_t>();
  const scalar_t* l_ptr = lam.data_ptr<scalar_t>();
  const scalar_t* m_ptr = mean.data_ptr<scalar_t>();
  const scalar_t* v_ptr = var.data_ptr<scalar_t>();
  scalar_t* o_ptr = out.data_ptr<scalar_t>();
  const scalar_t low = static_cast<scalar_t>(lo);
  const scalar_t high = static_cast<scalar_t>(hi);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(hw, 1));

  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / channels;
      const int64_t c = p % channels;
      const scalar_t scale = a_ptr[n * a_sn + c * a_sc] /
                             std::sqrt(v_ptr[c] + static_cast<scalar_t>(eps));
      const scalar_t shift = l_ptr[n * l_sn + c * l_sc] - m_ptr[c] * scale;
      const scalar_t* xp = x_ptr + p * hw;
      scalar_t* op = o_ptr + p * hw;
#pragma omp simd
      for (int64_t i = 0; i < hw; ++i) {
        scalar_t v = xp[i] * scale + shift;
        // NaN passes through both comparisons, as in torch.clamp.
        v = v < low ? low : v;
        v = v > high ? high : v;
        op[i] = v;
      }
    }
  });
}

template <typename scalar_t>
void plane_means_kernel(const torch::Tensor& x, torch::Tensor& out) {
  const int64_t planes = x.size(0) * x.size(1);
  const int64_t hw = x.size(2) * x.size(3);
  const scalar_t* x_ptr = x.data_ptr<scalar_t>();
  scalar_t* o_ptr = out.data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(hw, 1));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const scalar_t* xp = x_ptr + p * hw;
      double acc = 0;  // double: exact enough for any map size
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < hw; ++i) acc += xp[i];
      o_ptr[p] = static_cast<scalar_t>(acc / static_cast<double>(hw));
    }
  });
}

// out[n, o] = sum_i h[n, g * in_g + i] * w[o, i], g = o / out_g: a grouped
// FC with few inputs per group (DN's g=1 has one), cheaper as a loop than
// as a batched matmul.
template <typename scalar_t>
void grouped_fc_kernel(const torch::Tensor& h, const torch::Tensor& w,
                       int64_t groups, torch::Tensor& out) {
  const int64_t n = h.size(0), in_features = h.size(1);
  const int64_t out_features = w.size(0), in_g = w.size(1);
  const int64_t out_g = out_features / groups;
  const scalar_t* h_ptr = h.data_ptr<scalar_t>();
  const scalar_t* w_ptr = w.data_ptr<scalar_t>();
  scalar_t* o_ptr = out.data_ptr<scalar_t>();
  for (int64_t s = 0; s < n; ++s) {
    for (int64_t o = 0; o < out_features; ++o) {
      const scalar_t* hp = h_ptr + s * in_features + (o / out_g) * in_g;
      const scalar_t* wp = w_ptr + o * in_g;
      scalar_t acc = 0;
      for (int64_t i = 0; i < in_g; ++i) acc += hp[i] * wp[i];
      o_ptr[s * out_features + o] = acc;
    }
  }
}

}  // namespace

// y = clamp((x - mean) / sqrt(var + eps) * alpha + lam, lo, hi)
torch::Tensor normalize_act(const torch::Tensor& x, const torch::Tensor& alpha,
                            const torch::Tensor& lam, const torch::Tensor& mean,
                            const torch::Tensor& var, double eps, double lo,
                            double hi) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.is_contiguous(),
              "normalize_act: x must be a contiguous 4-D CPU tensor");
  const auto dtype = x.scalar_type();
  for (const auto* t : {&alpha, &lam, &mean, &var}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == dtype,
                "normalize_act: parameters must be CPU tensors of x's dtype");
  }
  TORCH_CHECK(alpha.dim() == 2 && lam.dim() == 2 &&
                  alpha.size(1) == x.size(1) && lam.size(1) == x.size(1) &&
                  (alpha.size(0) == 1 || alpha.size(0) == x.size(0)) &&
                  (lam.size(0) == 1 || lam.size(0) == x.size(0)),
              "normalize_act: alpha and lam must be (N, C) or (1, C)");
  const auto mean_c = mean.contiguous();
  const auto var_c = var.contiguous();
  TORCH_CHECK(mean_c.numel() == x.size(1) && var_c.numel() == x.size(1),
              "normalize_act: mean and var must have C elements");
  auto out = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(dtype, "normalize_act", [&] {
    normalize_act_kernel<scalar_t>(x, alpha, lam, mean_c, var_c, eps, lo, hi,
                                   out);
  });
  return out;
}

// DN-B with statistics mean/var (C,): pooled = mean_hw(x) (N, C),
// delta = FC2(sigmoid(FC1(pooled))) (N, 2C), alpha = base_scale + delta[:, :C],
// lam = base_shift + delta[:, C:], then normalize_act.
torch::Tensor dn_b_inference(const torch::Tensor& x, const torch::Tensor& fc1_weight,
                             const torch::Tensor& fc1_bias,
                             const torch::Tensor& fc2_weight, int64_t fc2_groups,
                             const torch::Tensor& base_scale,
                             const torch::Tensor& base_shift,
                             const torch::Tensor& mean, const torch::Tensor& var,
                             double eps, double lo, double hi) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.is_contiguous(),
              "dn_b_inference: x must be a contiguous 4-D CPU tensor");
  const int64_t n = x.size(0), channels = x.size(1);
  TORCH_CHECK(fc1_weight.dim() == 2 && fc1_weight.size(1) == channels &&
                  fc2_weight.dim() == 2 && fc2_weight.size(0) == 2 * channels &&
                  fc2_groups >= 1 &&
                  fc2_weight.size(1) * fc2_groups == fc1_weight.size(0),
              "dn_b_inference: SC-Module weights do not fit ", channels,
              " channels");
  for (const auto* t : {&fc1_weight, &fc1_bias, &fc2_weight, &base_scale,
                        &base_shift}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == x.scalar_type(),
                "dn_b_inference: parameters must be CPU tensors of x's dtype");
  }
  auto pooled = torch::empty({n, channels}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dn_b_pool", [&] {
    plane_means_kernel<scalar_t>(x, pooled);
  });
  const auto hidden = torch::sigmoid(torch::addmm(fc1_bias, pooled, fc1_weight.t()));
  torch::Tensor delta;
  if (fc2_groups == 1) {
    delta = torch::mm(hidden, fc2_weight.t());
  } else {
    delta = torch::empty({n, 2 * channels}, x.options());
    const auto w = fc2_weight.contiguous();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dn_b_fc2", [&] {
      grouped_fc_kernel<scalar_t>(hidden, w, fc2_groups, delta);
    });
  }
  const auto alpha = delta.narrow(1, 0, channels) + base_scale;
  const auto lam = delta.narrow(1, channels, channels) + base_shift;
  return normalize_act(x, alpha, lam, mean, var, eps, lo, hi);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("normalize_act", &normalize_act,
        "DN inference: normalisation, affine and clamp in one pass");
  m.def("dn_b_inference", &dn_b_inference,
        "DN-B inference: pooling, SC-Module and normalize_act in one call");
}
