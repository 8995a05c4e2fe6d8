// CPU kernels for pangu's networks, called from MindSpore through ops.Custom(func_type="aot").
//
// GroupNorm(+SiLU): MindSpore 2.10's CPU GroupNorm is ~40x slower than PyTorch's and the norm-then-
// SiLU pair of every ResBlock costs two more passes over memory; these kernels do normalisation,
// affine and the optional SiLU in one pass each way. Layout NCHW (any trailing spatial dims), fp32.
//
// Conv2d: MindSpore hands oneDNN plain NCHW tensors, which on AVX-512 selects a reference fallback
// and under an AVX2 cap im2col+gemm. These kernels call the same oneDNN library (MindSpore's
// libdnnl.so.3) with layout "any", so it picks its blocked-layout direct kernels, as PyTorch does.
//
// AOT calling convention (MindSpore): params = inputs then outputs; shapes[i][j], ndims[i].
// Statistics are accumulated in double so the result matches a two-pass fp32 reference to ~1e-6.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <omp.h>

namespace {

inline int64_t numel(int ndim, const int64_t *shape, int from = 0) {
  int64_t n = 1;
  for (int i = from; i < ndim; ++i) n *= shape[i];
  return n;
}

// exp and erf as plain arithmetic so that GCC vectorises the loops that call them: glibc's vector
// expf is only declared under full -ffast-math, which would also drop NaN/inf semantics. Cephes'
// expf polynomial (~1 ulp) and Numerical Recipes' erfc (relative error < 1.2e-7).
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float erf_approx(float x) {
  const float z = std::fabs(x);
  const float t = 1.0f / (1.0f + 0.5f * z);
  const float poly =
      -z * z - 1.26551223f +
      t * (1.00002368f +
           t * (0.37409196f +
                t * (0.09678418f +
                     t * (-0.18628806f +
                          t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f + t * (-0.82215223f + t * 0.17087277f))))))));
  const float erfc = t * exp_approx(poly);
  return x >= 0.0f ? 1.0f - erfc : erfc - 1.0f;
}

inline float sigmoid(float z) { return 1.0f / (1.0f + exp_approx(-z)); }

// x: (N, C, S...) ; gamma, beta: (C) ; eps: (1)
// y: like x ; mean, rstd: (N, G)
template <bool kSiLU>
int group_norm_forward(void **params, int *ndims, int64_t **shapes) {
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float *beta = static_cast<const float *>(params[2]);
  const float eps = *static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  float *mean_out = static_cast<float *>(params[5]);
  float *rstd_out = static_cast<float *>(params[6]);
  const int64_t n = shapes[0][0], c = shapes[0][1], spatial = numel(ndims[0], shapes[0], 2);
  const int64_t groups = shapes[5][1], cg = c / groups, group_size = cg * spatial;

#pragma omp parallel for schedule(static)
  for (int64_t ng = 0; ng < n * groups; ++ng) {
    const float *xg = x + ng * group_size;
    double sum = 0.0, sumsq = 0.0;
    for (int64_t i = 0; i < group_size; ++i) {
      const double v = xg[i];
      sum += v;
      sumsq += v * v;
    }
    const double mean = sum / group_size;
    const double var = std::max(sumsq / group_size - mean * mean, 0.0);
    const float rstd = static_cast<float>(1.0 / std::sqrt(var + eps));
    mean_out[ng] = static_cast<float>(mean);
    rstd_out[ng] = rstd;
    const int64_t c0 = (ng % groups) * cg;
    float *yg = y + ng * group_size;
    for (int64_t k = 0; k < cg; ++k) {
      const float a = gamma[c0 + k] * rstd;
      const float b = beta[c0 + k] - static_cast<float>(mean) * a;
      const float *xc = xg + k * spatial;
      float *yc = yg + k * spatial;
      for (int64_t i = 0; i < spatial; ++i) {
        const float z = xc[i] * a + b;
        yc[i] = kSiLU ? z * sigmoid(z) : z;
      }
    }
  }
  return 0;
}

// dy, x: (N, C, S...) ; gamma, beta: (C) ; mean, rstd: (N, G)
// dx: like x ; dgamma, dbeta: (C)
template <bool kSiLU>
int group_norm_backward(void **params, int *ndims, int64_t **shapes) {
  const float *dy = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  const float *gamma = static_cast<const float *>(params[2]);
  const float *beta = static_cast<const float *>(params[3]);
  const float *mean_in = static_cast<const float *>(params[4]);
  const float *rstd_in = static_cast<const float *>(params[5]);
  float *dx = static_cast<float *>(params[6]);
  float *dgamma = static_cast<float *>(params[7]);
  float *dbeta = static_cast<float *>(params[8]);
  const int64_t n = shapes[1][0], c = shapes[1][1], spatial = numel(ndims[1], shapes[1], 2);
  const int64_t groups = shapes[4][1], cg = c / groups, group_size = cg * spatial;
  // Per-sample channel sums, reduced over the batch afterwards in a fixed order (deterministic).
  std::vector<double> sum_dz(n * c), sum_dz_xhat(n * c);

#pragma omp parallel for schedule(static)
  for (int64_t ng = 0; ng < n * groups; ++ng) {
    const int64_t sample = ng / groups, c0 = (ng % groups) * cg;
    const float mean = mean_in[ng], rstd = rstd_in[ng];
    const float *xg = x + ng * group_size;
    const float *dyg = dy + ng * group_size;
    float *dxg = dx + ng * group_size;
    // Pass 1: dz (the gradient before SiLU) into dx as scratch, and its channel sums.
    double g_dxhat = 0.0, g_dxhat_xhat = 0.0;
    for (int64_t k = 0; k < cg; ++k) {
      const int64_t ch = c0 + k;
      const float a = gamma[ch] * rstd;
      const float b = beta[ch] - mean * a;
      const float *xc = xg + k * spatial;
      const float *dyc = dyg + k * spatial;
      float *dzc = dxg + k * spatial;
      double s_dz = 0.0, s_dz_xhat = 0.0;
      for (int64_t i = 0; i < spatial; ++i) {
        float dz = dyc[i];
        if (kSiLU) {
          const float z = xc[i] * a + b;
          const float s = sigmoid(z);
          dz *= s * (1.0f + z * (1.0f - s));
        }
        dzc[i] = dz;
        s_dz += dz;
        s_dz_xhat += dz * ((xc[i] - mean) * rstd);
      }
      sum_dz[sample * c + ch] = s_dz;
      sum_dz_xhat[sample * c + ch] = s_dz_xhat;
      g_dxhat += gamma[ch] * s_dz;
      g_dxhat_xhat += gamma[ch] * s_dz_xhat;
    }
    // Pass 2: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
    const float m1 = static_cast<float>(g_dxhat / group_size);
    const float m2 = static_cast<float>(g_dxhat_xhat / group_size);
    for (int64_t k = 0; k < cg; ++k) {
      const float gk = gamma[c0 + k];
      const float *xc = xg + k * spatial;
      float *dxc = dxg + k * spatial;
      for (int64_t i = 0; i < spatial; ++i) {
        const float xhat = (xc[i] - mean) * rstd;
        dxc[i] = rstd * (gk * dxc[i] - m1 - xhat * m2);
      }
    }
  }
  for (int64_t ch = 0; ch < c; ++ch) {
    double g = 0.0, b = 0.0;
    for (int64_t s = 0; s < n; ++s) {
      g += sum_dz_xhat[s * c + ch];
      b += sum_dz[s * c + ch];
    }
    dgamma[ch] = static_cast<float>(g);
    dbeta[ch] = static_cast<float>(b);
  }
  return 0;
}

// ------------------------------------------------------------------------------------------------
// Row kernels over the last axis (rows = all leading dims): softmax, LayerNorm, GEGLU, bias gradient.
// MindSpore's CPU softmax backward, LayerNormGrad and BiasAddGrad reduce at ~1/50 of memory speed.

inline int64_t rows_of(int ndim, const int64_t *shape) { return numel(ndim - 1, shape); }

// x -> y = x * sigmoid(x)
int silu_forward(void **params, int *ndims, int64_t **shapes) {
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t n = numel(ndims[0], shapes[0]);
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * sigmoid(x[i]);
  return 0;
}

// dy, x -> dx = dy * s * (1 + x * (1 - s)), s = sigmoid(x)
int silu_backward(void **params, int *ndims, int64_t **shapes) {
  const float *dy = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[2]);
  const int64_t n = numel(ndims[0], shapes[0]);
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const float s = sigmoid(x[i]);
    dx[i] = dy[i] * s * (1.0f + x[i] * (1.0f - s));
  }
  return 0;
}

// x -> y = softmax(x, -1)
int softmax_forward(void **params, int *ndims, int64_t **shapes) {
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t rows = rows_of(ndims[0], shapes[0]), n = shapes[0][ndims[0] - 1];
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float *xr = x + r * n;
    float *yr = y + r * n;
    float m = -INFINITY;
    for (int64_t i = 0; i < n; ++i) m = std::max(m, xr[i]);
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      yr[i] = exp_approx(xr[i] - m);
      sum += yr[i];
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < n; ++i) yr[i] *= inv;
  }
  return 0;
}

// dy, y -> dx = y * (dy - sum(dy * y))
int softmax_backward(void **params, int *ndims, int64_t **shapes) {
  const float *dy = static_cast<const float *>(params[0]);
  const float *y = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[2]);
  const int64_t rows = rows_of(ndims[0], shapes[0]), n = shapes[0][ndims[0] - 1];
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float *dyr = dy + r * n, *yr = y + r * n;
    float *dxr = dx + r * n;
    float dot = 0.0f;
    for (int64_t i = 0; i < n; ++i) dot += dyr[i] * yr[i];
    for (int64_t i = 0; i < n; ++i) dxr[i] = yr[i] * (dyr[i] - dot);
  }
  return 0;
}

// x, gamma, beta, eps[1] -> y, mean(rows), rstd(rows)
int layer_norm_forward(void **params, int *ndims, int64_t **shapes) {
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float *beta = static_cast<const float *>(params[2]);
  const float eps = *static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  float *mean_out = static_cast<float *>(params[5]);
  float *rstd_out = static_cast<float *>(params[6]);
  const int64_t rows = rows_of(ndims[0], shapes[0]), n = shapes[0][ndims[0] - 1];
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float *xr = x + r * n;
    float *yr = y + r * n;
    double sum = 0.0, sumsq = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      sum += xr[i];
      sumsq += static_cast<double>(xr[i]) * xr[i];
    }
    const double mean = sum / n;
    const float rstd = static_cast<float>(1.0 / std::sqrt(std::max(sumsq / n - mean * mean, 0.0) + eps));
    const float m = static_cast<float>(mean);
    for (int64_t i = 0; i < n; ++i) yr[i] = (xr[i] - m) * rstd * gamma[i] + beta[i];
    mean_out[r] = m;
    rstd_out[r] = rstd;
  }
  return 0;
}

// dy, x, gamma, mean, rstd -> dx, dgamma, dbeta
int layer_norm_backward(void **params, int *ndims, int64_t **shapes) {
  const float *dy = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  const float *gamma = static_cast<const float *>(params[2]);
  const float *mean = static_cast<const float *>(params[3]);
  const float *rstd = static_cast<const float *>(params[4]);
  float *dx = static_cast<float *>(params[5]);
  float *dgamma = static_cast<float *>(params[6]);
  float *dbeta = static_cast<float *>(params[7]);
  const int64_t rows = rows_of(ndims[1], shapes[1]), n = shapes[1][ndims[1] - 1];
  const int threads = omp_get_max_threads();
  std::vector<double> partial(static_cast<size_t>(threads) * 2 * n, 0.0);  // per-thread dgamma, dbeta
#pragma omp parallel
  {
    double *pg = partial.data() + static_cast<size_t>(omp_get_thread_num()) * 2 * n, *pb = pg + n;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float *dyr = dy + r * n, *xr = x + r * n;
      float *dxr = dx + r * n;
      const float m = mean[r], s = rstd[r];
      float sum_g = 0.0f, sum_gx = 0.0f;
      for (int64_t i = 0; i < n; ++i) {
        const float xhat = (xr[i] - m) * s;
        const float g = dyr[i] * gamma[i];
        sum_g += g;
        sum_gx += g * xhat;
        pg[i] += dyr[i] * xhat;
        pb[i] += dyr[i];
      }
      const float m1 = sum_g / n, m2 = sum_gx / n;
      for (int64_t i = 0; i < n; ++i) dxr[i] = s * (dyr[i] * gamma[i] - m1 - (xr[i] - m) * s * m2);
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    double g = 0.0, b = 0.0;
    for (int t = 0; t < threads; ++t) {
      g += partial[static_cast<size_t>(t) * 2 * n + i];
      b += partial[static_cast<size_t>(t) * 2 * n + n + i];
    }
    dgamma[i] = static_cast<float>(g);
    dbeta[i] = static_cast<float>(b);
  }
  return 0;
}

inline float gelu(float g) { return 0.5f * g * (1.0f + erf_approx(g * 0.70710678118654752f)); }
inline float gelu_grad(float g) {
  return 0.5f * (1.0f + erf_approx(g * 0.70710678118654752f)) + g * 0.39894228040143268f * exp_approx(-0.5f * g * g);
}

// h (rows, 2d) -> y (rows, d) = h[:, :d] * gelu(h[:, d:])   (exact erf GELU)
int geglu_forward(void **params, int *ndims, int64_t **shapes) {
  const float *h = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t rows = rows_of(ndims[0], shapes[0]), d = shapes[0][ndims[0] - 1] / 2;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float *value = h + r * 2 * d, *gate = value + d;
    float *yr = y + r * d;
    for (int64_t i = 0; i < d; ++i) yr[i] = value[i] * gelu(gate[i]);
  }
  return 0;
}

// dy (rows, d), h (rows, 2d) -> dh (rows, 2d)
int geglu_backward(void **params, int *ndims, int64_t **shapes) {
  const float *dy = static_cast<const float *>(params[0]);
  const float *h = static_cast<const float *>(params[1]);
  float *dh = static_cast<float *>(params[2]);
  const int64_t rows = rows_of(ndims[1], shapes[1]), d = shapes[1][ndims[1] - 1] / 2;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float *value = h + r * 2 * d, *gate = value + d, *dyr = dy + r * d;
    float *dvalue = dh + r * 2 * d, *dgate = dvalue + d;
    for (int64_t i = 0; i < d; ++i) {
      dvalue[i] = dyr[i] * gelu(gate[i]);
      dgate[i] = dyr[i] * value[i] * gelu_grad(gate[i]);
    }
  }
  return 0;
}

// dy (rows, n) -> db (n) = column sums
int bias_grad(void **params, int *ndims, int64_t **shapes) {
  const float *dy = static_cast<const float *>(params[0]);
  float *db = static_cast<float *>(params[1]);
  const int64_t rows = rows_of(ndims[0], shapes[0]), n = shapes[0][ndims[0] - 1];
  const int threads = omp_get_max_threads();
  std::vector<double> partial(static_cast<size_t>(threads) * n, 0.0);
#pragma omp parallel
  {
    double *p = partial.data() + static_cast<size_t>(omp_get_thread_num()) * n;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < n; ++i) p[i] += dy[r * n + i];
  }
  for (int64_t i = 0; i < n; ++i) {
    double sum = 0.0;
    for (int t = 0; t < threads; ++t) sum += partial[static_cast<size_t>(t) * n + i];
    db[i] = static_cast<float>(sum);
  }
  return 0;
}

}  // namespace

#define PANGU_AOT(name, body)                                                                  \
  extern "C" int name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, \
                      void *stream, void *extra) {                                             \
    return body(params, ndims, shapes);                                                        \
  }

PANGU_AOT(GroupNormForward, group_norm_forward<false>)
PANGU_AOT(GroupNormSiLUForward, group_norm_forward<true>)
PANGU_AOT(GroupNormBackward, group_norm_backward<false>)
PANGU_AOT(GroupNormSiLUBackward, group_norm_backward<true>)
PANGU_AOT(SiluForward, silu_forward)
PANGU_AOT(SiluBackward, silu_backward)
PANGU_AOT(SoftmaxForward, softmax_forward)
PANGU_AOT(SoftmaxBackward, softmax_backward)
PANGU_AOT(LayerNormForward, layer_norm_forward)
PANGU_AOT(LayerNormBackward, layer_norm_backward)
PANGU_AOT(GegluForward, geglu_forward)
PANGU_AOT(GegluBackward, geglu_backward)


// ================================================================================================
// Conv2d through oneDNN. MindSpore ships libdnnl.so.3 but no headers: the few C API entry points
// used here are declared below (oneDNN v3 C API; values from dnnl_types.h, stable across v3).

extern "C" {
typedef int dnnl_status_t;
typedef int64_t dnnl_dims_t[12];
typedef struct dnnl_engine *dnnl_engine_t;
typedef struct dnnl_memory_desc *dnnl_memory_desc_t;
typedef const struct dnnl_memory_desc *const_dnnl_memory_desc_t;
typedef struct dnnl_primitive_desc *dnnl_primitive_desc_t;
typedef const struct dnnl_primitive_desc *const_dnnl_primitive_desc_t;
typedef struct dnnl_primitive *dnnl_primitive_t;
typedef const struct dnnl_primitive *const_dnnl_primitive_t;
typedef struct dnnl_memory *dnnl_memory_t;
typedef struct dnnl_stream *dnnl_stream_t;
typedef const struct dnnl_primitive_attr *const_dnnl_primitive_attr_t;
typedef struct {
  int arg;
  dnnl_memory_t memory;
} dnnl_exec_arg_t;

dnnl_status_t dnnl_engine_create(dnnl_engine_t *engine, int kind, size_t index);
dnnl_status_t dnnl_memory_desc_create_with_tag(dnnl_memory_desc_t *md, int ndims, const dnnl_dims_t dims,
                                               int data_type, int tag);
dnnl_status_t dnnl_convolution_forward_primitive_desc_create(
    dnnl_primitive_desc_t *pd, dnnl_engine_t engine, int prop_kind, int alg_kind, const_dnnl_memory_desc_t src,
    const_dnnl_memory_desc_t weights, const_dnnl_memory_desc_t bias, const_dnnl_memory_desc_t dst,
    const dnnl_dims_t strides, const dnnl_dims_t dilates, const dnnl_dims_t padding_l, const dnnl_dims_t padding_r,
    const_dnnl_primitive_attr_t attr);
dnnl_status_t dnnl_convolution_backward_data_primitive_desc_create(
    dnnl_primitive_desc_t *pd, dnnl_engine_t engine, int alg_kind, const_dnnl_memory_desc_t diff_src,
    const_dnnl_memory_desc_t weights, const_dnnl_memory_desc_t diff_dst, const dnnl_dims_t strides,
    const dnnl_dims_t dilates, const dnnl_dims_t padding_l, const dnnl_dims_t padding_r,
    const_dnnl_primitive_desc_t hint_fwd_pd, const_dnnl_primitive_attr_t attr);
dnnl_status_t dnnl_convolution_backward_weights_primitive_desc_create(
    dnnl_primitive_desc_t *pd, dnnl_engine_t engine, int alg_kind, const_dnnl_memory_desc_t src,
    const_dnnl_memory_desc_t diff_weights, const_dnnl_memory_desc_t diff_bias, const_dnnl_memory_desc_t diff_dst,
    const dnnl_dims_t strides, const dnnl_dims_t dilates, const dnnl_dims_t padding_l, const dnnl_dims_t padding_r,
    const_dnnl_primitive_desc_t hint_fwd_pd, const_dnnl_primitive_attr_t attr);
const_dnnl_memory_desc_t dnnl_primitive_desc_query_md(const_dnnl_primitive_desc_t pd, int what, int index);
dnnl_status_t dnnl_primitive_desc_query(const_dnnl_primitive_desc_t pd, int what, int index, void *result);
int dnnl_memory_desc_equal(const_dnnl_memory_desc_t lhs, const_dnnl_memory_desc_t rhs);
dnnl_status_t dnnl_reorder_primitive_desc_create(dnnl_primitive_desc_t *pd, const_dnnl_memory_desc_t src,
                                                 dnnl_engine_t src_engine, const_dnnl_memory_desc_t dst,
                                                 dnnl_engine_t dst_engine, const_dnnl_primitive_attr_t attr);
dnnl_status_t dnnl_primitive_create(dnnl_primitive_t *primitive, const_dnnl_primitive_desc_t pd);
dnnl_status_t dnnl_primitive_execute(const_dnnl_primitive_t primitive, dnnl_stream_t stream, int nargs,
                                     const dnnl_exec_arg_t *args);
dnnl_status_t dnnl_memory_create(dnnl_memory_t *memory, const_dnnl_memory_desc_t md, dnnl_engine_t engine,
                                 void *handle);
dnnl_status_t dnnl_memory_set_data_handle(dnnl_memory_t memory, void *handle);
dnnl_status_t dnnl_threadpool_interop_stream_create(dnnl_stream_t *stream, dnnl_engine_t engine, void *threadpool);
dnnl_status_t dnnl_stream_wait(dnnl_stream_t stream);
dnnl_status_t dnnl_sgemm(char transa, char transb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                         int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
dnnl_status_t dnnl_threadpool_interop_sgemm(char transa, char transb, int64_t M, int64_t N, int64_t K, float alpha,
                                            const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                                            float *C, int64_t ldc, void *threadpool);
}

// The threadpool interface of oneDNN's THREADPOOL runtime (dnnl_threadpool_iface.hpp); MindSpore's
// libdnnl is built with it, so a stream without a pool would run single-threaded.
namespace dnnl {
namespace threadpool_interop {
struct threadpool_iface {
  virtual int get_num_threads() const = 0;
  virtual bool get_in_parallel() const = 0;
  virtual void parallel_for(int n, const std::function<void(int, int)> &fn) = 0;
  virtual uint64_t get_flags() const = 0;
  virtual void wait() = 0;
  virtual ~threadpool_iface() = default;
};
}  // namespace threadpool_interop
}  // namespace dnnl

namespace {

constexpr int kF32 = 3, kTagAny = 1, kTagA = 2, kTagABCD = 5;
constexpr int kForwardTraining = 64, kConvDirect = 1, kEngineCpu = 1;
constexpr int kQueryImplInfo = 8, kQuerySrc = 129, kQueryDiffSrc = 130, kQueryWeights = 131,
              kQueryDiffWeights = 132, kQueryDst = 133, kQueryDiffDst = 134;
constexpr int kArgSrc = 1, kArgDst = 17, kArgWeights = 33, kArgBias = 41, kArgDiffSrc = 129, kArgDiffDst = 145,
              kArgDiffWeights = 161, kArgDiffBias = 169, kArgFrom = 1, kArgTo = 17;

class OmpPool : public dnnl::threadpool_interop::threadpool_iface {
 public:
  int get_num_threads() const override { return omp_get_max_threads(); }
  bool get_in_parallel() const override { return omp_in_parallel(); }
  void parallel_for(int n, const std::function<void(int, int)> &fn) override {
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < n; ++i) fn(i, n);
  }
  uint64_t get_flags() const override { return 0; }  // synchronous
  void wait() override {}
};

#define DNNL_CHECK(call)                                                        \
  do {                                                                          \
    dnnl_status_t status_ = (call);                                             \
    if (status_ != 0) {                                                         \
      std::fprintf(stderr, "pangu fast_ops: %s failed (%d)\n", #call, status_); \
      return nullptr;                                                           \
    }                                                                           \
  } while (0)

struct Runtime {
  dnnl_engine_t engine = nullptr;
  dnnl_stream_t stream = nullptr;
  OmpPool pool;
  std::mutex mu;  // one conv at a time: plans own their scratch buffers
};

Runtime *runtime() {
  static Runtime *rt = [] {
    auto *r = new Runtime();
    if (dnnl_engine_create(&r->engine, kEngineCpu, 0) != 0 ||
        dnnl_threadpool_interop_stream_create(&r->stream, r->engine, &r->pool) != 0) {
      std::fprintf(stderr, "pangu fast_ops: cannot open a oneDNN CPU stream\n");
      return static_cast<Runtime *>(nullptr);
    }
    return r;
  }();
  return rt;
}

// One tensor argument of a primitive: the caller's plain buffer, and when oneDNN chose another
// layout, an internal buffer in that layout plus the reorder between the two.
struct Port {
  int arg = 0;
  bool is_output = false;
  dnnl_memory_t user = nullptr;
  dnnl_memory_t internal = nullptr;  // == user when no reorder is needed
  dnnl_primitive_t reorder = nullptr;
};

struct Plan {
  dnnl_primitive_t primitive = nullptr;
  std::vector<Port> ports;
  std::string impl;
};

dnnl_memory_desc_t plain_md(int ndims, const int64_t *dims, int tag) {
  dnnl_dims_t d = {0};
  for (int i = 0; i < ndims; ++i) d[i] = dims[i];
  dnnl_memory_desc_t md = nullptr;
  if (dnnl_memory_desc_create_with_tag(&md, ndims, d, kF32, tag) != 0) return nullptr;
  return md;
}

bool make_port(Runtime *rt, Port &port, int arg, bool is_output, const_dnnl_memory_desc_t user_md,
               const_dnnl_memory_desc_t chosen_md) {
  port.arg = arg;
  port.is_output = is_output;
  if (dnnl_memory_create(&port.user, user_md, rt->engine, nullptr) != 0) return false;
  if (dnnl_memory_desc_equal(user_md, chosen_md)) {
    port.internal = port.user;
    return true;
  }
  if (dnnl_memory_create(&port.internal, chosen_md, rt->engine, (void *)(size_t)-1) != 0) return false;
  dnnl_primitive_desc_t rpd = nullptr;
  const_dnnl_memory_desc_t from = is_output ? chosen_md : user_md, to = is_output ? user_md : chosen_md;
  if (dnnl_reorder_primitive_desc_create(&rpd, from, rt->engine, to, rt->engine, nullptr) != 0) return false;
  return dnnl_primitive_create(&port.reorder, rpd) == 0;
}

enum Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

struct ConvShape {
  int64_t x[4], w[4], y[4];
  int64_t stride[2], pad_l[2], pad_r[2];
  std::string key(Kind kind) const {
    std::string k = std::to_string(kind);
    for (int64_t v : x) k += "," + std::to_string(v);
    for (int64_t v : w) k += "," + std::to_string(v);
    for (int64_t v : y) k += "," + std::to_string(v);
    for (int64_t v : stride) k += "," + std::to_string(v);
    for (int64_t v : pad_l) k += "," + std::to_string(v);
    for (int64_t v : pad_r) k += "," + std::to_string(v);
    return k;
  }
};

dnnl_primitive_desc_t forward_pd(Runtime *rt, const ConvShape &s) {
  dnnl_memory_desc_t x_any = plain_md(4, s.x, kTagAny), w_any = plain_md(4, s.w, kTagAny),
                     y_any = plain_md(4, s.y, kTagAny), b = plain_md(1, &s.w[0], kTagA);
  dnnl_dims_t strides = {s.stride[0], s.stride[1]}, dil = {0, 0}, pl = {s.pad_l[0], s.pad_l[1]},
              pr = {s.pad_r[0], s.pad_r[1]};
  dnnl_primitive_desc_t pd = nullptr;
  DNNL_CHECK(dnnl_convolution_forward_primitive_desc_create(&pd, rt->engine, kForwardTraining, kConvDirect, x_any,
                                                            w_any, b, y_any, strides, dil, pl, pr, nullptr));
  return pd;
}

Plan *build_plan(Runtime *rt, Kind kind, const ConvShape &s) {
  auto *plan = new Plan();
  dnnl_memory_desc_t x_md = plain_md(4, s.x, kTagABCD), w_md = plain_md(4, s.w, kTagABCD),
                     y_md = plain_md(4, s.y, kTagABCD), b_md = plain_md(1, &s.w[0], kTagA);
  dnnl_memory_desc_t x_any = plain_md(4, s.x, kTagAny), w_any = plain_md(4, s.w, kTagAny),
                     y_any = plain_md(4, s.y, kTagAny);
  dnnl_dims_t strides = {s.stride[0], s.stride[1]}, dil = {0, 0}, pl = {s.pad_l[0], s.pad_l[1]},
              pr = {s.pad_r[0], s.pad_r[1]};
  dnnl_primitive_desc_t hint = forward_pd(rt, s), pd = nullptr;
  if (!hint) return nullptr;
  struct Want {
    int arg, query;
    bool out;
    dnnl_memory_desc_t user;
  };
  std::vector<Want> wants;
  if (kind == kForward) {
    pd = hint;
    wants = {{kArgSrc, kQuerySrc, false, x_md}, {kArgWeights, kQueryWeights, false, w_md},
             {kArgBias, kQueryWeights, false, b_md}, {kArgDst, kQueryDst, true, y_md}};
  } else if (kind == kBackwardData) {
    DNNL_CHECK(dnnl_convolution_backward_data_primitive_desc_create(&pd, rt->engine, kConvDirect, x_any, w_any, y_any,
                                                                    strides, dil, pl, pr, hint, nullptr));
    wants = {{kArgDiffDst, kQueryDiffDst, false, y_md}, {kArgWeights, kQueryWeights, false, w_md},
             {kArgDiffSrc, kQueryDiffSrc, true, x_md}};
  } else {
    DNNL_CHECK(dnnl_convolution_backward_weights_primitive_desc_create(
        &pd, rt->engine, kConvDirect, x_any, w_any, b_md, y_any, strides, dil, pl, pr, hint, nullptr));
    wants = {{kArgSrc, kQuerySrc, false, x_md}, {kArgDiffDst, kQueryDiffDst, false, y_md},
             {kArgDiffWeights, kQueryDiffWeights, true, w_md}, {kArgDiffBias, kQueryDiffWeights, true, b_md}};
  }
  for (const Want &want : wants) {
    Port port;
    // Bias (and its gradient) stay plain 1-D: index 1 of the weights query.
    const bool is_bias = want.arg == kArgBias || want.arg == kArgDiffBias;
    const_dnnl_memory_desc_t chosen = dnnl_primitive_desc_query_md(pd, want.query, is_bias ? 1 : 0);
    if (!chosen || !make_port(rt, port, want.arg, want.out, want.user, chosen)) return nullptr;
    plan->ports.push_back(port);
  }
  const char *impl = nullptr;
  if (dnnl_primitive_desc_query(pd, kQueryImplInfo, 0, &impl) == 0 && impl) plan->impl = impl;
  DNNL_CHECK(dnnl_primitive_create(&plan->primitive, pd));
  return plan;
}

// Runs a plan on the caller's buffers (one pointer per port, in port order).
int run_plan(Runtime *rt, Plan *plan, const std::vector<void *> &buffers) {
  std::vector<dnnl_exec_arg_t> args;
  for (size_t i = 0; i < plan->ports.size(); ++i) {
    Port &port = plan->ports[i];
    if (dnnl_memory_set_data_handle(port.user, buffers[i]) != 0) return 1;
    if (port.reorder && !port.is_output) {
      dnnl_exec_arg_t r[2] = {{kArgFrom, port.user}, {kArgTo, port.internal}};
      if (dnnl_primitive_execute(port.reorder, rt->stream, 2, r) != 0) return 1;
    }
    args.push_back({port.arg, port.internal});
  }
  if (dnnl_primitive_execute(plan->primitive, rt->stream, (int)args.size(), args.data()) != 0) return 1;
  for (Port &port : plan->ports) {
    if (port.reorder && port.is_output) {
      dnnl_exec_arg_t r[2] = {{kArgFrom, port.internal}, {kArgTo, port.user}};
      if (dnnl_primitive_execute(port.reorder, rt->stream, 2, r) != 0) return 1;
    }
  }
  return dnnl_stream_wait(rt->stream) == 0 ? 0 : 1;
}

std::unordered_map<std::string, Plan *> &plans() {
  static std::unordered_map<std::string, Plan *> cache;
  return cache;
}

// cfg: int32 [stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right]
ConvShape conv_shape(const int64_t *x, const int64_t *w, const int64_t *y, const int32_t *cfg) {
  ConvShape s;
  for (int i = 0; i < 4; ++i) s.x[i] = x[i], s.w[i] = w[i], s.y[i] = y[i];
  s.stride[0] = cfg[0], s.stride[1] = cfg[1];
  s.pad_l[0] = cfg[2], s.pad_r[0] = cfg[3], s.pad_l[1] = cfg[4], s.pad_r[1] = cfg[5];
  return s;
}

int conv_run(Kind kind, const ConvShape &s, const std::vector<void *> &buffers) {
  Runtime *rt = runtime();
  if (!rt) return 1;
  std::lock_guard<std::mutex> lock(rt->mu);
  Plan *&plan = plans()[s.key(kind)];
  if (!plan) plan = build_plan(rt, kind, s);
  if (!plan) {
    std::fprintf(stderr, "pangu fast_ops: no oneDNN convolution for %s\n", s.key(kind).c_str());
    return 1;
  }
  return run_plan(rt, plan, buffers);
}

// x (N,C,H,W), w (O,C,kh,kw), b (O), cfg -> y (N,O,OH,OW)
int conv_forward(void **params, int *ndims, int64_t **shapes) {
  ConvShape s = conv_shape(shapes[0], shapes[1], shapes[4], static_cast<const int32_t *>(params[3]));
  return conv_run(kForward, s, {params[0], params[1], params[2], params[4]});
}

// dy (N,O,OH,OW), w, x (shape only), cfg -> dx
int conv_backward_data(void **params, int *ndims, int64_t **shapes) {
  ConvShape s = conv_shape(shapes[2], shapes[1], shapes[0], static_cast<const int32_t *>(params[3]));
  return conv_run(kBackwardData, s, {params[0], params[1], params[4]});
}

// dy, x, w (shape only), cfg -> dw, db
int conv_backward_weights(void **params, int *ndims, int64_t **shapes) {
  ConvShape s = conv_shape(shapes[1], shapes[2], shapes[0], static_cast<const int32_t *>(params[3]));
  return conv_run(kBackwardWeights, s, {params[1], params[0], params[4], params[5]});
}

// ------------------------------------------------------------------------------------------------
// Dense through oneDNN's sgemm (row-major): MindSpore's MatMul reached 11-17 GFLOP/s on the
// (2048 x 128) x (128 x 128) products of the attention projections, where sgemm itself reaches ~100.

int sgemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b,
          int64_t ldb, float *c, int64_t ldc) {
  Runtime *rt = runtime();
  if (!rt) return 1;
  return dnnl_threadpool_interop_sgemm(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc, &rt->pool) == 0 ? 0 : 1;
}

// x (rows, K), w (N, K), b (N) -> y (rows, N) = x w^T + b
int dense_forward(void **params, int *ndims, int64_t **shapes) {
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  float *y = static_cast<float *>(params[3]);
  const int64_t rows = rows_of(ndims[0], shapes[0]), k = shapes[1][1], n = shapes[1][0];
  if (sgemm('N', 'T', rows, n, k, x, k, w, k, y, n)) return 1;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < n; ++i) y[r * n + i] += b[i];
  return 0;
}

// dy (rows, N), x (rows, K), w (N, K) -> dx (rows, K), dw (N, K), db (N)
int dense_backward(void **params, int *ndims, int64_t **shapes) {
  const float *dy = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  const float *w = static_cast<const float *>(params[2]);
  float *dx = static_cast<float *>(params[3]);
  float *dw = static_cast<float *>(params[4]);
  const int64_t rows = rows_of(ndims[1], shapes[1]), k = shapes[2][1], n = shapes[2][0];
  if (sgemm('N', 'N', rows, k, n, dy, n, w, k, dx, k)) return 1;
  if (sgemm('T', 'N', n, k, rows, dy, n, x, k, dw, k)) return 1;
  void *bias_params[2] = {params[0], params[5]};
  return bias_grad(bias_params, ndims, shapes);
}

// ------------------------------------------------------------------------------------------------
// Multi-head attention softmax(q k^T * scale) v on (B, N, heads*d) tensors, heads read in place
// through the row stride (no head-split transposes). One (batch, head) pair per OpenMP task, each
// with single-threaded sgemm calls. The probabilities are an output: the backward pass needs them.

// Sequential sgemm (no threadpool: the caller is already one of the parallel tasks).
inline bool gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                 const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
  return dnnl_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) == 0;
}

// q (B,N,C), k (B,M,C), v (B,M,C), cfg [heads, scale] -> out (B,N,C), probs (B,heads,N,M)
int attention_forward(void **params, int *ndims, int64_t **shapes) {
  const float *q = static_cast<const float *>(params[0]);
  const float *k = static_cast<const float *>(params[1]);
  const float *v = static_cast<const float *>(params[2]);
  const float *cfg = static_cast<const float *>(params[3]);
  float *out = static_cast<float *>(params[4]);
  float *probs = static_cast<float *>(params[5]);
  const int64_t b = shapes[0][0], n = shapes[0][1], c = shapes[0][2], m = shapes[1][1];
  const int64_t heads = static_cast<int64_t>(cfg[0]), d = c / heads;
  const float scale = cfg[1];
  int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(| : failed)
  for (int64_t bh = 0; bh < b * heads; ++bh) {
    const int64_t bi = bh / heads, h = bh % heads;
    const float *qh = q + bi * n * c + h * d, *kh = k + bi * m * c + h * d, *vh = v + bi * m * c + h * d;
    float *p = probs + bh * n * m;
    if (!gemm('N', 'T', n, m, d, scale, qh, c, kh, c, 0.0f, p, m)) failed = 1;
    for (int64_t i = 0; i < n; ++i) {
      float *row = p + i * m;
      float mx = -INFINITY;
      for (int64_t j = 0; j < m; ++j) mx = std::max(mx, row[j]);
      float sum = 0.0f;
      for (int64_t j = 0; j < m; ++j) {
        row[j] = exp_approx(row[j] - mx);
        sum += row[j];
      }
      const float inv = 1.0f / sum;
      for (int64_t j = 0; j < m; ++j) row[j] *= inv;
    }
    if (!gemm('N', 'N', n, d, m, 1.0f, p, m, vh, c, 0.0f, out + bi * n * c + h * d, c)) failed = 1;
  }
  return failed;
}

// dout (B,N,C), q, k, v, probs, cfg -> dq, dk, dv
int attention_backward(void **params, int *ndims, int64_t **shapes) {
  const float *dout = static_cast<const float *>(params[0]);
  const float *q = static_cast<const float *>(params[1]);
  const float *k = static_cast<const float *>(params[2]);
  const float *v = static_cast<const float *>(params[3]);
  const float *probs = static_cast<const float *>(params[4]);
  const float *cfg = static_cast<const float *>(params[5]);
  float *dq = static_cast<float *>(params[6]);
  float *dk = static_cast<float *>(params[7]);
  float *dv = static_cast<float *>(params[8]);
  const int64_t b = shapes[1][0], n = shapes[1][1], c = shapes[1][2], m = shapes[2][1];
  const int64_t heads = static_cast<int64_t>(cfg[0]), d = c / heads;
  const float scale = cfg[1];
  int failed = 0;
#pragma omp parallel reduction(| : failed)
  {
    std::vector<float> ds(static_cast<size_t>(n * m));  // dP, then dS, per thread
#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < b * heads; ++bh) {
      const int64_t bi = bh / heads, h = bh % heads;
      const int64_t qo = bi * n * c + h * d, ko = bi * m * c + h * d;
      const float *p = probs + bh * n * m;
      if (!gemm('T', 'N', m, d, n, 1.0f, p, m, dout + qo, c, 0.0f, dv + ko, c)) failed = 1;
      if (!gemm('N', 'T', n, m, d, 1.0f, dout + qo, c, v + ko, c, 0.0f, ds.data(), m)) failed = 1;
      for (int64_t i = 0; i < n; ++i) {
        float *row = ds.data() + i * m;
        const float *prow = p + i * m;
        float dot = 0.0f;
        for (int64_t j = 0; j < m; ++j) dot += row[j] * prow[j];
        for (int64_t j = 0; j < m; ++j) row[j] = prow[j] * (row[j] - dot);
      }
      if (!gemm('N', 'N', n, d, m, scale, ds.data(), m, k + ko, c, 0.0f, dq + qo, c)) failed = 1;
      if (!gemm('T', 'N', m, d, n, scale, ds.data(), m, q + qo, c, 0.0f, dk + ko, c)) failed = 1;
    }
  }
  return failed;
}

}  // namespace

PANGU_AOT(AttentionForward, attention_forward)
PANGU_AOT(AttentionBackward, attention_backward)
PANGU_AOT(DenseForward, dense_forward)
PANGU_AOT(DenseBackward, dense_backward)
PANGU_AOT(Conv2dForward, conv_forward)
PANGU_AOT(Conv2dBackwardData, conv_backward_data)
PANGU_AOT(Conv2dBackwardWeights, conv_backward_weights)

// Which oneDNN implementation serves a convolution (for diagnostics): fills `out` (size cap).
extern "C" int PanguConvImpl(int kind, const int64_t *x, const int64_t *w, const int64_t *y, const int32_t *cfg,
                             char *out, int cap) {
  Runtime *rt = runtime();
  if (!rt) return 1;
  ConvShape s = conv_shape(x, w, y, cfg);
  std::lock_guard<std::mutex> lock(rt->mu);
  Plan *&plan = plans()[s.key(static_cast<Kind>(kind))];
  if (!plan) plan = build_plan(rt, static_cast<Kind>(kind), s);
  if (!plan) return 1;
  std::snprintf(out, cap, "%s", plan->impl.c_str());
  return 0;
}
