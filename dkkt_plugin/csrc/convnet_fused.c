/* Fused CPU kernels for the no-grad embedding of dkkt_plugin.nets.ConvNet (instance norm, ReLU,
 * 2x2 average pooling), built and loaded by dkkt_plugin/fused.py.
 *
 * Each image is handled by one thread, start to end, in a scratch buffer that stays in the L2
 * cache: the conv output (fp32), its per-channel mean and variance (two passes over the
 * buffer), then normalise + affine + ReLU + pool in a third pass that writes bf16. Layouts are
 * channels-last so every inner loop runs over contiguous channels and vectorises.
 * Results do not depend on the thread count (each image is computed the same way by one thread).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RELU(v) ((v) < 0.f ? 0.f : (v)) /* NaN stays NaN, as torch.relu */

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
        float s = gamma[c] / sqrtf(scale[c] / (float)P + eps);
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
