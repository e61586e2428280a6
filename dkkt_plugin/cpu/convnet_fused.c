/* Fused CPU kernels for dkkt_plugin.nets.ConvNet (instance norm, ReLU, 2x2 average pooling), built
 * by dkkt_plugin/cpu/build.py and called by dkkt_plugin/cpu/kernels.py: first the no-grad bf16
 * embedding (dkkt_block1, dkkt_norm_relu_pool), then the blocks with a backward (dkkt_nrp_*,
 * dkkt_first_*), further down.
 *
 * No-grad embedding: each image is handled by one thread, start to end, in a scratch buffer that
 * stays in the L2 cache: the conv output (fp32), its per-channel mean and variance (two passes
 * over the buffer), then normalise + affine + ReLU + pool in a third pass that writes bf16.
 * Layouts are channels-last so every inner loop runs over contiguous channels and vectorises.
 * Results do not depend on the thread count (each image is computed the same way by one thread);
 * neither do the blocks' below (each plane by one thread; shares summed by the caller).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RELU(v) ((v) < 0.f ? 0.f : (v)) /* NaN stays NaN, as torch.relu */
/* 1/sqrt(var + eps); NaN where the variance overflowed (torch's norm then gives NaN too, and the
 * losses' non-finite checks must see it), instead of a zero that would hide it */
#define RSTD(v) (isfinite(v) ? 1 / sqrt(v) : NAN)

static inline uint16_t to_bf16(float f) { /* round to nearest even, NaN kept NaN */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* y: (H*W, C) fp32 -> out: (H/2, W/2, C) bf16 = avgpool2x2(relu(instance_norm(y) * gamma + beta)) */
static void norm_relu_pool(const float *restrict y, int H, int W, int C, const float *restrict gamma,
                           const float *restrict beta, float eps, float *restrict mean,
                           float *restrict scale, float *restrict shift, uint16_t *restrict out) {
    const int P = H * W;
    for (int c = 0; c < C; c++) mean[c] = 0.f, scale[c] = 0.f;
    for (int p = 0; p < P; p++) {
        const float *restrict r = y + (size_t)p * C;
#pragma omp simd
        for (int c = 0; c < C; c++) mean[c] += r[c];
    }
    for (int c = 0; c < C; c++) mean[c] /= (float)P;
    for (int p = 0; p < P; p++) { /* two-pass (biased) variance, as torch's group norm */
        const float *restrict r = y + (size_t)p * C;
#pragma omp simd
        for (int c = 0; c < C; c++) {
            float d = r[c] - mean[c];
            scale[c] += d * d;
        }
    }
    for (int c = 0; c < C; c++) {
        float s = gamma[c] * RSTD(scale[c] / (float)P + eps);
        scale[c] = s;
        shift[c] = beta[c] - mean[c] * s;
    }
    const int Ho = H / 2, Wo = W / 2; /* floor, as nn.AvgPool2d(2) */
    for (int i = 0; i < Ho; i++)
        for (int j = 0; j < Wo; j++) {
            const float *restrict a = y + ((size_t)(2 * i) * W + 2 * j) * C;
            const float *restrict b = a + C, *restrict d = a + (size_t)W * C, *restrict e = d + C;
            uint16_t *restrict o = out + ((size_t)i * Wo + j) * C;
#pragma omp simd
            for (int c = 0; c < C; c++) {
                float s = scale[c], t = shift[c];
                float v = RELU(a[c] * s + t) + RELU(b[c] * s + t) + RELU(d[c] * s + t) + RELU(e[c] * s + t);
                o[c] = to_bf16(0.25f * v);
            }
        }
}

/* First block. x: (B, Cin, Hin, Win) fp32; wt: (Cin*9, C) fp32, tap-major (wt[(ci*9 + 3*di + dj)*C + c]);
 * bias, gamma, beta: (C,); out: (B, H/2, W/2, C) bf16 with H = Hin + 2*pad - 2, W likewise.
 * Returns 0, or -1 if a scratch buffer could not be allocated. */
int dkkt_block1(const float *x, int B, int Cin, int Hin, int Win, int pad, const float *wt, const float *bias,
                int C, const float *gamma, const float *beta, float eps, uint16_t *out, int threads) {
    const int H = Hin + 2 * pad - 2, W = Win + 2 * pad - 2, Hp = Hin + 2 * pad, Wp = Win + 2 * pad;
    const int K = Cin * 9;
    int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *y = malloc((size_t)H * W * C * sizeof(float));
        float *xp = malloc((size_t)Cin * Hp * Wp * sizeof(float));
        float *stats = malloc((size_t)3 * C * sizeof(float));
        float *q = malloc((size_t)K * sizeof(float));
        const int ok = y && xp && stats && q;
#pragma omp for schedule(static)
        for (int n = 0; n < B; n++) {
            if (!ok) {
#pragma omp atomic write
                failed = 1;
                continue;
            }
            const float *xi = x + (size_t)n * Cin * Hin * Win;
            memset(xp, 0, (size_t)Cin * Hp * Wp * sizeof(float)); /* zero-padded copy */
            for (int ci = 0; ci < Cin; ci++)
                for (int i = 0; i < Hin; i++)
                    memcpy(xp + ((size_t)ci * Hp + i + pad) * Wp + pad, xi + ((size_t)ci * Hin + i) * Win,
                           (size_t)Win * sizeof(float));
            for (int i = 0; i < H; i++)
                for (int j = 0; j < W; j++) {
                    for (int ci = 0; ci < Cin; ci++)
                        for (int di = 0; di < 3; di++)
                            for (int dj = 0; dj < 3; dj++)
                                q[ci * 9 + di * 3 + dj] = xp[((size_t)ci * Hp + i + di) * Wp + j + dj];
                    float *r = y + ((size_t)i * W + j) * C;
                    for (int ci = 0; ci < Cin; ci++) { /* 9 taps per pass: unrolled, vectorised over c */
                        const float *restrict w = wt + (size_t)ci * 9 * C, *restrict qc = q + ci * 9;
                        const float *start = ci == 0 ? bias : r; /* may alias r: same index only */
#pragma omp simd
                        for (int c = 0; c < C; c++) {
                            float acc = start[c];
                            for (int k = 0; k < 9; k++) acc += w[(size_t)k * C + c] * qc[k];
                            r[c] = acc;
                        }
                    }
                }
            norm_relu_pool(y, H, W, C, gamma, beta, eps, stats, stats + C, stats + 2 * C,
                           out + (size_t)n * (H / 2) * (W / 2) * C);
        }
        free(y);
        free(xp);
        free(stats);
        free(q);
    }
    return failed ? -1 : 0;
}

/* Later blocks. z: (B, H, W, C) bf16 conv output -> out: (B, H/2, W/2, C) bf16. Returns 0 or -1. */
int dkkt_norm_relu_pool(const uint16_t *z, int B, int H, int W, int C, const float *gamma, const float *beta,
                        float eps, uint16_t *out, int threads) {
    int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *y = malloc((size_t)H * W * C * sizeof(float));
        float *stats = malloc((size_t)3 * C * sizeof(float));
        const int ok = y && stats;
#pragma omp for schedule(static)
        for (int n = 0; n < B; n++) {
            if (!ok) {
#pragma omp atomic write
                failed = 1;
                continue;
            }
            const uint16_t *restrict zi = z + (size_t)n * H * W * C;
            const size_t m = (size_t)H * W * C;
#pragma omp simd
            for (size_t k = 0; k < m; k++) y[k] = from_bf16(zi[k]);
            norm_relu_pool(y, H, W, C, gamma, beta, eps, stats, stats + C, stats + 2 * C,
                           out + (size_t)n * (H / 2) * (W / 2) * C);
        }
        free(y);
        free(stats);
    }
    return failed ? -1 : 0;
}

/* ---- Instance norm + ReLU + 2x2 average pooling with a backward (dkkt_plugin.fused.NormReluPool) ----
 * NCHW: each (image, channel) plane of H*W values (<= 32x32 in a ConvNet: it stays in L1) is done by
 * one thread. Forward: mean, then the two-pass (biased) variance, then normalise + affine + ReLU + pool;
 * mean and rstd = 1/sqrt(var + eps) are kept for the backward. Backward, with z = y*s + t the affine
 * output (s = gamma*rstd), dz = dout/4 spread over each window where z > 0, and xhat = (y - mean)*rstd:
 *     dy = s * (dz - (sum(dz) + xhat * sum(dz * xhat)) / (H*W)),
 * and the plane's sum(dz * xhat), sum(dz) (its share of dgamma, dbeta; summed over images by the
 * caller, so the result does not depend on the thread count). H and W must be even.
 * T: the tensors' storage type; A: the arithmetic type (also of gamma, beta, mean, rstd, partials). */
#define NRP_KERNELS(SUFFIX, T, A, LOAD, STORE)                                                             \
    int dkkt_nrp_forward_##SUFFIX(const T *y, int planes, int C, int H, int W, const A *gamma,              \
                                  const A *beta, A eps, T *out, A *mean, A *rstd, int threads) {            \
        const int M = H * W, Ho = H / 2, Wo = W / 2;                                                       \
        _Pragma("omp parallel for schedule(static) num_threads(threads) if (threads > 1)")                  \
        for (int p = 0; p < planes; p++) {                                                                  \
            const T *restrict yp = y + (size_t)p * M;                                                       \
            T *restrict op = out + (size_t)p * Ho * Wo;                                                     \
            A s = 0, v = 0;                                                                                 \
            _Pragma("omp simd reduction(+ : s)")                                                            \
            for (int k = 0; k < M; k++) s += LOAD(yp[k]);                                                   \
            const A mu = s / (A)M;                                                                          \
            _Pragma("omp simd reduction(+ : v)")                                                            \
            for (int k = 0; k < M; k++) {                                                                   \
                A d = LOAD(yp[k]) - mu;                                                                     \
                v += d * d;                                                                                 \
            }                                                                                               \
            const A r = RSTD(v / (A)M + eps), sc = gamma[p % C] * r, sh = beta[p % C] - mu * sc;    \
            mean[p] = mu, rstd[p] = r;                                                                      \
            for (int i = 0; i < Ho; i++) {                                                                  \
                const T *restrict a = yp + (size_t)(2 * i) * W, *restrict b = a + W;                        \
                _Pragma("omp simd")                                                                         \
                for (int j = 0; j < Wo; j++) {                                                              \
                    A q = RELU(LOAD(a[2 * j]) * sc + sh) + RELU(LOAD(a[2 * j + 1]) * sc + sh) +             \
                          RELU(LOAD(b[2 * j]) * sc + sh) + RELU(LOAD(b[2 * j + 1]) * sc + sh);              \
                    op[(size_t)i * Wo + j] = STORE((A)0.25 * q);                                            \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
        return 0;                                                                                           \
    }                                                                                                       \
                                                                                                            \
    int dkkt_nrp_backward_##SUFFIX(const T *y, const T *dout, int planes, int C, int H, int W,             \
                                   const A *gamma, const A *beta, const A *mean, const A *rstd, T *dy,      \
                                   A *dgamma, A *dbeta, int threads) {                                      \
        const int M = H * W, Wo = W / 2;                                                                   \
        int failed = 0;                                                                                     \
        _Pragma("omp parallel num_threads(threads) if (threads > 1)") {                                     \
            A *dz = malloc((size_t)M * sizeof(A)); /* the plane's dz, in L1 */                              \
            _Pragma("omp for schedule(static)")                                                             \
            for (int p = 0; p < planes; p++) {                                                              \
                if (!dz) {                                                                                  \
                    _Pragma("omp atomic write") failed = 1;                                                 \
                    continue;                                                                               \
                }                                                                                           \
                const T *restrict yp = y + (size_t)p * M, *restrict gp = dout + (size_t)p * (H / 2) * Wo;   \
                T *restrict dp = dy + (size_t)p * M;                                                        \
                const A mu = mean[p], r = rstd[p], sc = gamma[p % C] * r, sh = beta[p % C] - mu * sc;      \
                for (int i = 0; i < H; i += 2) { /* dout / 4 spread over each 2x2 window */                 \
                    A *restrict row = dz + (size_t)i * W;                                                   \
                    const T *restrict g = gp + (size_t)(i / 2) * Wo;                                        \
                    for (int j = 0; j < Wo; j++) row[2 * j] = row[2 * j + 1] = (A)0.25 * LOAD(g[j]);        \
                    memcpy(row + W, row, (size_t)W * sizeof(A));                                            \
                }                                                                                           \
                A sdz = 0, sdzx = 0;                                                                        \
                _Pragma("omp simd reduction(+ : sdz, sdzx)")                                                \
                for (int k = 0; k < M; k++) { /* ReLU's mask, and the sums */                               \
                    const A u = LOAD(yp[k]), d = u * sc + sh > 0 ? dz[k] : (A)0;                            \
                    dz[k] = d;                                                                              \
                    sdz += d;                                                                               \
                    sdzx += d * ((u - mu) * r);                                                             \
                }                                                                                           \
                dgamma[p] = sdzx, dbeta[p] = sdz;                                                           \
                const A inv = (A)1 / (A)M;                                                                  \
                _Pragma("omp simd")                                                                         \
                for (int k = 0; k < M; k++)                                                                 \
                    dp[k] = STORE(sc * (dz[k] - (sdz + (LOAD(yp[k]) - mu) * r * sdzx) * inv));              \
            }                                                                                               \
            free(dz);                                                                                       \
        }                                                                                                   \
        return failed ? -1 : 0;                                                                             \
    }

#define SAME(v) (v)
NRP_KERNELS(f32, float, float, SAME, SAME)
NRP_KERNELS(f64, double, double, SAME, SAME)
NRP_KERNELS(bf16, uint16_t, float, from_bf16, to_bf16)

/* ---- A ConvNet's first block with a backward (dkkt_plugin.fused.FirstBlock) ----
 * conv 3x3 (stride 1, zero padding pad) -> instance norm -> ReLU -> 2x2 average pooling, NCHW,
 * one image per thread, one output channel's plane (<= 32x32) at a time in L1: the conv output is
 * never stored. The backward recomputes each plane from the input (Cin is small: 1 or 3), then
 * gives dx (if dx != NULL) and, per image, the shares of dw, db, dgamma, dbeta (if dw != NULL),
 * summed over images by the caller (results do not depend on the thread count).
 * A plane is stored with the padded input's row stride Wp = W + 2, so that every tap of the
 * convolution, of its input gradient and of its weight gradient is one flat loop over H*Wp values
 * (the two extra columns per row are kept at values that do not change any result).
 * x: (B, Cin, Hin, Win); w: (C, Cin, 3, 3); b, gamma, beta: (C,); out: (B, C, H/2, W/2) with
 * H = Hin + 2*pad - 2 (W likewise, both even); mean, rstd: (B, C). */
#define TAPS(q, Wp, k) /* the 9 inputs of output k of a plane with row stride Wp */                     \
    w0 * q[k] + w1 * q[k + 1] + w2 * q[k + 2] + w3 * q[k + Wp] + w4 * q[k + Wp + 1] + w5 * q[k + Wp + 2] +  \
        w6 * q[k + 2 * Wp] + w7 * q[k + 2 * Wp + 1] + w8 * q[k + 2 * Wp + 2]
#define LOAD_TAPS(T, wt)                                                                                    \
    const T w0 = (wt)[0], w1 = (wt)[1], w2 = (wt)[2], w3 = (wt)[3], w4 = (wt)[4], w5 = (wt)[5], w6 = (wt)[6], \
            w7 = (wt)[7], w8 = (wt)[8]

#define FIRST_BLOCK_KERNELS(SUFFIX, T)                                                                     \
    /* xp: (Cin, Hp, Wp) zero-padded copy of image xi, then Wp + 4 zeros of slack */                      \
    static void pad_##SUFFIX(const T *xi, int Cin, int Hin, int Win, int pad, T *xp) {                    \
        const int Hp = Hin + 2 * pad, Wp = Win + 2 * pad;                                                  \
        memset(xp, 0, ((size_t)Cin * Hp * Wp + Wp + 4) * sizeof(T));                                      \
        for (int ci = 0; ci < Cin; ci++)                                                                   \
            for (int i = 0; i < Hin; i++)                                                                  \
                memcpy(xp + ((size_t)ci * Hp + i + pad) * Wp + pad, xi + ((size_t)ci * Hin + i) * Win,     \
                       (size_t)Win * sizeof(T));                                                           \
    }                                                                                                      \
    /* y: (H, Wp) = channel c of the convolution of xp (columns W, W+1: finite, meaningless); returns   \
     * the sum over the plane, extra columns included */                                                  \
    static T conv_plane_##SUFFIX(const T *restrict xp, int Cin, int Hp, int Wp, const T *restrict wc,      \
                                 T bias, T *restrict y) {                                                  \
        const int L = (Hp - 2) * Wp;                                                                       \
        T s = 0;                                                                                           \
        for (int ci = 0; ci < Cin; ci++) {                                                                 \
            const T *restrict q = xp + (size_t)ci * Hp * Wp;                                               \
            const T *restrict prev = ci == 0 ? NULL : y;                                                   \
            LOAD_TAPS(T, wc + ci * 9);                                                                     \
            if (ci == 0 && Cin == 1) {                                                                     \
                _Pragma("omp simd reduction(+ : s)")                                                       \
                for (int k = 0; k < L; k++) {                                                              \
                    const T v = bias + (TAPS(q, Wp, k));                                                   \
                    y[k] = v;                                                                              \
                    s += v;                                                                                \
                }                                                                                          \
            } else if (ci == 0) {                                                                          \
                _Pragma("omp simd")                                                                        \
                for (int k = 0; k < L; k++) y[k] = bias + (TAPS(q, Wp, k));                                \
            } else {                                                                                       \
                (void)prev;                                                                                \
                _Pragma("omp simd")                                                                        \
                for (int k = 0; k < L; k++) y[k] += TAPS(q, Wp, k);                                        \
            }                                                                                              \
        }                                                                                                  \
        if (Cin > 1) {                                                                                     \
            _Pragma("omp simd reduction(+ : s)")                                                           \
            for (int k = 0; k < L; k++) s += y[k];                                                         \
        }                                                                                                  \
        return s;                                                                                          \
    }                                                                                                      \
    static void set_pad_columns_##SUFFIX(T *y, int H, int Wp, T v) {                                       \
        for (int i = 0; i < H; i++) y[(size_t)i * Wp + Wp - 2] = y[(size_t)i * Wp + Wp - 1] = v;           \
    }                                                                                                      \
    static T pad_columns_sum_##SUFFIX(const T *y, int H, int Wp) {                                         \
        T s = 0;                                                                                           \
        for (int i = 0; i < H; i++) s += y[(size_t)i * Wp + Wp - 2] + y[(size_t)i * Wp + Wp - 1];          \
        return s;                                                                                          \
    }                                                                                                      \
                                                                                                           \
    int dkkt_first_forward_##SUFFIX(const T *x, int B, int Cin, int Hin, int Win, int pad, const T *w,     \
                                    const T *b, int C, const T *gamma, const T *beta, T eps, T *out,       \
                                    uint16_t *out16, T *mean, T *rstd, int threads) {                      \
        const int Hp = Hin + 2 * pad, Wp = Win + 2 * pad, H = Hp - 2, W = Wp - 2, M = H * W, L = H * Wp;   \
        const int Ho = H / 2, Wo = W / 2;                                                                  \
        int failed = 0;                                                                                    \
        _Pragma("omp parallel num_threads(threads) if (threads > 1)") {                                    \
            T *xp = malloc(((size_t)Cin * Hp * Wp + Wp + 4 + (size_t)L + L / 2) * sizeof(T));                 \
            _Pragma("omp for schedule(static)")                                                            \
            for (int n = 0; n < B; n++) {                                                                  \
                if (!xp) {                                                                                 \
                    _Pragma("omp atomic write") failed = 1;                                                \
                    continue;                                                                              \
                }                                                                                          \
                T *y = xp + (size_t)Cin * Hp * Wp + Wp + 4, *v2 = y + L; /* v2: (H, Wp/2) pooling sums */ \
                pad_##SUFFIX(x + (size_t)n * Cin * Hin * Win, Cin, Hin, Win, pad, xp);                     \
                for (int c = 0; c < C; c++) {                                                              \
                    T s = conv_plane_##SUFFIX(xp, Cin, Hp, Wp, w + (size_t)c * Cin * 9, b[c], y);          \
                    const T mu = (s - pad_columns_sum_##SUFFIX(y, H, Wp)) / (T)M;                          \
                    set_pad_columns_##SUFFIX(y, H, Wp, mu); /* they add 0 to the variance */               \
                    T v = 0;                                                                               \
                    _Pragma("omp simd reduction(+ : v)")                                                   \
                    for (int k = 0; k < L; k++) v += (y[k] - mu) * (y[k] - mu);                            \
                    const T r = RSTD(v / (T)M + eps), sc = gamma[c] * r, sh = beta[c] - mu * sc;    \
                    mean[(size_t)n * C + c] = mu, rstd[(size_t)n * C + c] = r;                             \
                    _Pragma("omp simd")                                                                    \
                    for (int k = 0; k < L; k++) y[k] = RELU(y[k] * sc + sh);                               \
                    _Pragma("omp simd")                                                                    \
                    for (int k = 0; k < L / 2; k++) v2[k] = y[2 * k] + y[2 * k + 1]; /* pairs in a row */  \
                    const int h2 = Wp / 2; /* v2's row stride */                                           \
                    _Pragma("omp simd")                                                                    \
                    for (int k = 0; k < L / 2 - h2; k++) v2[k] = (T)0.25 * (v2[k] + v2[k + h2]);           \
                    const size_t o = ((size_t)n * C + c) * Ho * Wo; /* rows 0, 2, 4.. of v2 are the output */ \
                    for (int i = 0; i < Ho; i++) {                                                         \
                        const T *restrict r = v2 + (size_t)(2 * i) * h2;                                   \
                        if (out16)                                                                         \
                            for (int j = 0; j < Wo; j++) out16[o + (size_t)i * Wo + j] = to_bf16((float)r[j]); \
                        else                                                                               \
                            memcpy(out + o + (size_t)i * Wo, r, (size_t)Wo * sizeof(T));                   \
                    }                                                                                      \
                }                                                                                          \
            }                                                                                              \
            free(xp);                                                                                      \
        }                                                                                                  \
        return failed ? -1 : 0;                                                                            \
    }                                                                                                      \
                                                                                                           \
    /* dout: (B, C, H/2, W/2); dx: (B, Cin, Hin, Win) or NULL; dw: (B, C, Cin*9), db, dgamma, dbeta:     \
     * (B, C), or dw == NULL (then none of the four) */                                                   \
    int dkkt_first_backward_##SUFFIX(const T *x, const T *dout, int B, int Cin, int Hin, int Win, int pad, \
                                     const T *w, const T *b, int C, const T *gamma, const T *beta,        \
                                     const T *mean, const T *rstd, T *dx, T *dw, T *db, T *dgamma,        \
                                     T *dbeta, int threads) {                                              \
        const int Hp = Hin + 2 * pad, Wp = Win + 2 * pad, H = Hp - 2, W = Wp - 2, M = H * W, L = H * Wp;   \
        const int Ho = H / 2, Wo = W / 2, P = Cin * Hp * Wp + Wp + 4, F = 2 * Wp + 2, G = Hp * Wp;         \
        int failed = 0;                                                                                    \
        _Pragma("omp parallel num_threads(threads) if (threads > 1)") {                                    \
            /* xp (P), dxp (Cin * G), y (L), dz with F zeros before and 2 Wp + F after */                \
            T *xp = malloc(((size_t)P + (size_t)Cin * G + L + F + L + 2 * Wp + F) * sizeof(T));            \
            _Pragma("omp for schedule(static)")                                                            \
            for (int n = 0; n < B; n++) {                                                                  \
                if (!xp) {                                                                                 \
                    _Pragma("omp atomic write") failed = 1;                                                \
                    continue;                                                                              \
                }                                                                                          \
                T *dxp = xp + P, *y = dxp + (size_t)Cin * G, *dz0 = y + L, *dz = dz0 + F;                  \
                pad_##SUFFIX(x + (size_t)n * Cin * Hin * Win, Cin, Hin, Win, pad, xp);                     \
                memset(dz0, 0, (size_t)F * sizeof(T));                                                     \
                memset(dz + L, 0, (size_t)(2 * Wp + F) * sizeof(T));                                       \
                if (dx) memset(dxp, 0, (size_t)Cin * G * sizeof(T));                                       \
                for (int c = 0; c < C; c++) {                                                              \
                    const size_t nc = (size_t)n * C + c;                                                   \
                    const T *restrict wc = w + (size_t)c * Cin * 9;                                        \
                    conv_plane_##SUFFIX(xp, Cin, Hp, Wp, wc, b[c], y);                                     \
                    const T mu = mean[nc], r = rstd[nc], sc = gamma[c] * r, sh = beta[c] - mu * sc;        \
                    const T *restrict g = dout + nc * Ho * Wo;                                             \
                    for (int i = 0; i < H; i += 2) { /* dout / 4 spread over each 2x2 window */            \
                        T *restrict row = dz + (size_t)i * Wp;                                             \
                        for (int j = 0; j < Wo; j++) row[2 * j] = row[2 * j + 1] = (T)0.25 * g[(i / 2) * Wo + j]; \
                        row[W] = row[W + 1] = 0;                                                           \
                        memcpy(row + Wp, row, (size_t)Wp * sizeof(T));                                     \
                    }                                                                                      \
                    T sdz = 0, sdzx = 0;                                                                   \
                    _Pragma("omp simd reduction(+ : sdz, sdzx)")                                           \
                    for (int k = 0; k < L; k++) { /* ReLU's mask (dz is 0 in the extra columns) */         \
                        const T d = y[k] * sc + sh > 0 ? dz[k] : (T)0;                                     \
                        dz[k] = d;                                                                         \
                        sdz += d;                                                                          \
                        sdzx += d * ((y[k] - mu) * r);                                                     \
                    }                                                                                      \
                    const T inv = (T)1 / (T)M, k1 = sc * (sdz - mu * r * sdzx) * inv, k2 = sc * r * sdzx * inv; \
                    _Pragma("omp simd")                                                                    \
                    for (int k = 0; k < L; k++) /* dz becomes dy, the conv output's gradient */            \
                        dz[k] = sc * dz[k] - k1 - k2 * y[k];                                               \
                    set_pad_columns_##SUFFIX(dz, H, Wp, (T)0);                                             \
                    if (dw) {                                                                              \
                        T sdy = 0;                                                                         \
                        _Pragma("omp simd reduction(+ : sdy)")                                             \
                        for (int k = 0; k < L; k++) sdy += dz[k];                                          \
                        dgamma[nc] = sdzx, dbeta[nc] = sdz, db[nc] = sdy;                                  \
                        for (int ci = 0; ci < Cin; ci++) {                                                 \
                            const T *restrict q = xp + (size_t)ci * Hp * Wp;                               \
                            T a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0, a8 = 0;      \
                            _Pragma("omp simd reduction(+ : a0, a1, a2, a3, a4, a5, a6, a7, a8)")          \
                            for (int k = 0; k < L; k++) {                                                  \
                                const T d = dz[k];                                                         \
                                a0 += d * q[k], a1 += d * q[k + 1], a2 += d * q[k + 2];                    \
                                a3 += d * q[k + Wp], a4 += d * q[k + Wp + 1], a5 += d * q[k + Wp + 2];     \
                                a6 += d * q[k + 2 * Wp], a7 += d * q[k + 2 * Wp + 1], a8 += d * q[k + 2 * Wp + 2]; \
                            }                                                                              \
                            T *restrict dwc = dw + (nc * Cin + ci) * 9;                                    \
                            dwc[0] = a0, dwc[1] = a1, dwc[2] = a2, dwc[3] = a3, dwc[4] = a4;               \
                            dwc[5] = a5, dwc[6] = a6, dwc[7] = a7, dwc[8] = a8;                            \
                        }                                                                                  \
                    }                                                                                      \
                    if (dx)                                                                                \
                        for (int ci = 0; ci < Cin; ci++) { /* the transposed convolution, gather form */   \
                            T *restrict q = dxp + (size_t)ci * G;                                          \
                            const T *restrict e = dz - F; /* e[k + F - tap offset] = dz[k - tap offset] */ \
                            const T *wt = wc + ci * 9;                                                     \
                            const T w0 = wt[8], w1 = wt[7], w2 = wt[6], w3 = wt[5], w4 = wt[4], w5 = wt[3]; \
                            const T w6 = wt[2], w7 = wt[1], w8 = wt[0];                                    \
                            _Pragma("omp simd")                                                            \
                            for (int k = 0; k < G; k++) q[k] += TAPS(e, Wp, k);                            \
                        }                                                                                  \
                }                                                                                          \
                if (dx)                                                                                    \
                    for (int ci = 0; ci < Cin; ci++)                                                       \
                        for (int i = 0; i < Hin; i++)                                                      \
                            memcpy(dx + (((size_t)n * Cin + ci) * Hin + i) * Win,                          \
                                   dxp + ((size_t)ci * Hp + i + pad) * Wp + pad, (size_t)Win * sizeof(T)); \
            }                                                                                              \
            free(xp);                                                                                      \
        }                                                                                                  \
        return failed ? -1 : 0;                                                                            \
    }

FIRST_BLOCK_KERNELS(f32, float)
FIRST_BLOCK_KERNELS(f64, double)
