/* minibnn inference ops for exported C programs (see minibnn_infer.h). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif
#include "minibnn_infer.h"

#include <math.h>
#include <string.h>

static int64_t out_size(int64_t n, int64_t k, int64_t s, int64_t p, int64_t d) {
    return (n + 2 * p - d * (k - 1) - 1) / s + 1;
}

/* y[i] += a * x[i]: blocks of 8 with a fixed trip count, which compilers vectorize even at -O2 */
static void axpy(float a, const float *MBI_RESTRICT x, int64_t n, float *MBI_RESTRICT y) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; ++l) y[i + l] += a * x[i + l];
    for (; i < n; ++i) y[i] += a * x[i];
}

void mbi_conv2d(const float *MBI_RESTRICT x, int x_hwc, int64_t c, int64_t h, int64_t w,
                const float *MBI_RESTRICT wt, int64_t o, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                int64_t pw, int64_t dh, int64_t dw, float pad, const float *MBI_RESTRICT bias, float *MBI_RESTRICT y) {
    const int64_t oh = out_size(h, kh, sh, ph, dh), ow = out_size(w, kw, sw, pw, dw);
    const int64_t sc = x_hwc ? 1 : h * w, sy = x_hwc ? w * c : w, sx = x_hwc ? c : 1;
    for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox) {
            float *MBI_RESTRICT yp = y + (oy * ow + ox) * o;
            for (int64_t oc = 0; oc < o; ++oc) yp[oc] = bias != NULL ? bias[oc] : 0.0f;
            for (int64_t i = 0; i < kh; ++i)
                for (int64_t j = 0; j < kw; ++j) {
                    const int64_t iy = oy * sh - ph + i * dh, ix = ox * sw - pw + j * dw;
                    const int inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
                    if (!inside && pad == 0.0f) continue;
                    for (int64_t ic = 0; ic < c; ++ic) {
                        const float xv = inside ? x[ic * sc + iy * sy + ix * sx] : pad;
                        axpy(xv, wt + ((i * kw + j) * c + ic) * o, o, yp);
                    }
                }
        }
}

void mbi_dense(const float *MBI_RESTRICT x, int64_t k, const float *MBI_RESTRICT wt, int64_t o, const float *MBI_RESTRICT bias, float *MBI_RESTRICT y) {
    for (int64_t j = 0; j < o; ++j) {
        const float *row = wt + j * k;
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}; /* eight partial sums: vectorizes, and rounds less */
        int64_t i = 0;
        for (; i + 8 <= k; i += 8)
            for (int l = 0; l < 8; ++l) acc[l] += row[i + l] * x[i + l];
        float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        for (; i < k; ++i) s += row[i] * x[i];
        y[j] = bias != NULL ? s + bias[j] : s;
    }
}

void mbi_affine(const float *MBI_RESTRICT x, int64_t c, int64_t hw, const float *MBI_RESTRICT scale, const float *MBI_RESTRICT shift, float *MBI_RESTRICT y) {
    for (int64_t ch = 0; ch < c; ++ch) {
        const float a = scale != NULL ? scale[ch] : 1.0f, b = shift[ch];
        for (int64_t i = 0; i < hw; ++i) y[ch * hw + i] = x[ch * hw + i] * a + b;
    }
}

void mbi_affine_hwc(const float *MBI_RESTRICT x, int64_t hw, int64_t c, const float *MBI_RESTRICT scale,
                    const float *MBI_RESTRICT shift, float *MBI_RESTRICT y) {
    for (int64_t i = 0; i < hw; ++i) {
        const float *MBI_RESTRICT xr = x + i * c;
        float *MBI_RESTRICT yr = y + i * c;
        int64_t ch = 0;
        if (scale != NULL)
            for (; ch + 8 <= c; ch += 8)
                for (int l = 0; l < 8; ++l) yr[ch + l] = xr[ch + l] * scale[ch + l] + shift[ch + l];
        for (; ch < c; ++ch) yr[ch] = xr[ch] * (scale != NULL ? scale[ch] : 1.0f) + shift[ch];
    }
}

/* transposes in tiles of 16 x 16, so both sides are read and written in cache lines */
void mbi_hwc_to_chw(const float *MBI_RESTRICT x, int64_t hw, int64_t c, float *MBI_RESTRICT y) {
    for (int64_t i0 = 0; i0 < hw; i0 += 16)
        for (int64_t c0 = 0; c0 < c; c0 += 16)
            for (int64_t ch = c0; ch < c0 + 16 && ch < c; ++ch)
                for (int64_t i = i0; i < i0 + 16 && i < hw; ++i) y[ch * hw + i] = x[i * c + ch];
}

void mbi_chw_to_hwc(const float *MBI_RESTRICT x, int64_t c, int64_t hw, float *MBI_RESTRICT y) {
    for (int64_t i0 = 0; i0 < hw; i0 += 16)
        for (int64_t c0 = 0; c0 < c; c0 += 16)
            for (int64_t i = i0; i < i0 + 16 && i < hw; ++i)
                for (int64_t ch = c0; ch < c0 + 16 && ch < c; ++ch) y[i * c + ch] = x[ch * hw + i];
}

void mbi_max_pool2d(const float *MBI_RESTRICT x, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh,
                    int64_t sw, int64_t ph, int64_t pw, float *MBI_RESTRICT y) {
    const int64_t oh = out_size(h, kh, sh, ph, 1), ow = out_size(w, kw, sw, pw, 1);
    for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t oy = 0; oy < oh; ++oy)
            for (int64_t ox = 0; ox < ow; ++ox) {
                float best = -INFINITY;
                for (int64_t i = 0; i < kh; ++i)
                    for (int64_t j = 0; j < kw; ++j) {
                        const int64_t iy = oy * sh - ph + i, ix = ox * sw - pw + j;
                        const float v = (iy < 0 || iy >= h || ix < 0 || ix >= w) ? -INFINITY : x[(ch * h + iy) * w + ix];
                        best = (v > best || v != v) ? v : best; /* NaN wins, as in NumPy's maximum */
                    }
                y[(ch * oh + oy) * ow + ox] = best;
            }
}

void mbi_avg_pool2d(const float *MBI_RESTRICT x, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh,
                    int64_t sw, int64_t ph, int64_t pw, float *MBI_RESTRICT y) {
    const int64_t oh = out_size(h, kh, sh, ph, 1), ow = out_size(w, kw, sw, pw, 1);
    const float count = (float)(kh * kw);
    for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t oy = 0; oy < oh; ++oy)
            for (int64_t ox = 0; ox < ow; ++ox) {
                float total = 0.0f;
                for (int64_t i = 0; i < kh; ++i)
                    for (int64_t j = 0; j < kw; ++j) {
                        const int64_t iy = oy * sh - ph + i, ix = ox * sw - pw + j;
                        const float v = (iy < 0 || iy >= h || ix < 0 || ix >= w) ? 0.0f : x[(ch * h + iy) * w + ix];
                        total = (i == 0 && j == 0) ? v : total + v;
                    }
                y[(ch * oh + oy) * ow + ox] = total / count;
            }
}

/* channels-last pooling: each output pixel's channel vector starts from the first tap and takes the others */
static void pool_hwc(const float *MBI_RESTRICT x, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh,
                     int64_t sw, int64_t ph, int64_t pw, int is_max, float *MBI_RESTRICT y) {
    const int64_t oh = out_size(h, kh, sh, ph, 1), ow = out_size(w, kw, sw, pw, 1);
    const float count = (float)(kh * kw), outside = is_max ? -INFINITY : 0.0f;
    for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox) {
            float *MBI_RESTRICT yp = y + (oy * ow + ox) * c;
            for (int64_t i = 0; i < kh; ++i)
                for (int64_t j = 0; j < kw; ++j) {
                    const int64_t iy = oy * sh - ph + i, ix = ox * sw - pw + j;
                    const int inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
                    const float *MBI_RESTRICT xp = x + (inside ? (iy * w + ix) * c : 0);
                    if (i == 0 && j == 0) {
                        for (int64_t ch = 0; ch < c; ++ch) yp[ch] = inside ? xp[ch] : outside;
                    } else if (!inside) {
                        if (!is_max) continue; /* + 0; and -inf never wins a max */
                    } else if (is_max) {
                        for (int64_t ch = 0; ch < c; ++ch) { /* NaN wins, as in NumPy's maximum */
                            const float v = xp[ch], b = yp[ch];
                            yp[ch] = (v > b || v != v) ? v : b;
                        }
                    } else {
                        for (int64_t ch = 0; ch < c; ++ch) yp[ch] += xp[ch];
                    }
                }
            if (!is_max)
                for (int64_t ch = 0; ch < c; ++ch) yp[ch] /= count;
        }
}

void mbi_max_pool2d_hwc(const float *MBI_RESTRICT x, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw,
                        int64_t sh, int64_t sw, int64_t ph, int64_t pw, float *MBI_RESTRICT y) {
    pool_hwc(x, c, h, w, kh, kw, sh, sw, ph, pw, 1, y);
}

void mbi_avg_pool2d_hwc(const float *MBI_RESTRICT x, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw,
                        int64_t sh, int64_t sw, int64_t ph, int64_t pw, float *MBI_RESTRICT y) {
    pool_hwc(x, c, h, w, kh, kw, sh, sw, ph, pw, 0, y);
}

void mbi_global_avg_pool2d(const float *MBI_RESTRICT x, int64_t c, int64_t hw, float *MBI_RESTRICT y) {
    for (int64_t ch = 0; ch < c; ++ch) {
        double s = 0.0; /* NumPy sums pairwise in float32; a double sum is as close or closer */
        for (int64_t i = 0; i < hw; ++i) s += x[ch * hw + i];
        y[ch] = (float)(s / (double)hw);
    }
}

void mbi_global_avg_pool2d_hwc(const float *MBI_RESTRICT x, int64_t hw, int64_t c, float *MBI_RESTRICT y) {
    for (int64_t ch = 0; ch < c; ++ch) {
        double s = 0.0;
        for (int64_t i = 0; i < hw; ++i) s += x[i * c + ch];
        y[ch] = (float)(s / (double)hw);
    }
}

void mbi_relu(const float *MBI_RESTRICT x, int64_t n, float *MBI_RESTRICT y) {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void mbi_tanh(const float *MBI_RESTRICT x, int64_t n, float *MBI_RESTRICT y) {
    for (int64_t i = 0; i < n; ++i) y[i] = tanhf(x[i]);
}

void mbi_hardtanh(const float *MBI_RESTRICT x, int64_t n, float lo, float hi, float *MBI_RESTRICT y) {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] < lo ? lo : (x[i] > hi ? hi : x[i]);
}

void mbi_add(const float *MBI_RESTRICT a, const float *MBI_RESTRICT b, int64_t n, float *MBI_RESTRICT y) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; ++l) y[i + l] = a[i + l] + b[i + l];
    for (; i < n; ++i) y[i] = a[i] + b[i];
}

void mbi_quantize(const float *MBI_RESTRICT x, int64_t n, int bits, float *MBI_RESTRICT y) {
    if (bits >= 32) {
        if (y != x) memmove(y, x, (size_t)n * sizeof(float));
        return;
    }
    if (bits == 1) {
        for (int64_t i = 0; i < n; ++i) y[i] = x[i] >= 0.0f ? 1.0f : -1.0f;
        return;
    }
    const float levels = (float)(((int64_t)1 << bits) - 1);
    for (int64_t i = 0; i < n; ++i) {
        const float v = x[i] < 0.0f ? 0.0f : (x[i] > 1.0f ? 1.0f : x[i]);
        y[i] = nearbyintf(v * levels) / levels; /* the default rounding mode: ties to even, as np.round */
    }
}
