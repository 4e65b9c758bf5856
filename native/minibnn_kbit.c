/* minibnn bit-serial helpers (see minibnn_kbit.h for the contract). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif
#include "minibnn_kbit.h"

#include <string.h>

#include "minibnn_kernels.h" /* MBK_OK, MBK_EINVAL */

static int64_t n_words(int64_t k) { return (k + 63) / 64; }

/* u as int32, modulo 2^32 (well defined for every u; compilers make it a no-op) */
static int32_t to_i32(uint32_t u) {
    return u <= 0x7fffffffu ? (int32_t)u : (int32_t)(u - 0x80000000u) - 0x7fffffff - 1;
}

/* floor(v / 2) (|v| < 2^31) */
static int32_t floor_half(int32_t v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); }

/* round(clip(v, 0, 1) * top), ties to even, NaN -> 0: exact in float32, no libm */
static unsigned level_of(float v, float top) {
    if (!(v > 0.0f)) return 0; /* also NaN and -0 */
    if (v > 1.0f) v = 1.0f;
    const float s = v * top; /* one float32 multiply, as NumPy */
    unsigned n = (unsigned)s;
    const float f = s - (float)n; /* exact: s < 2^24 */
    if (f > 0.5f || (f == 0.5f && (n & 1u))) ++n;
    return n;
}

int mbs_pack_levels_f32(const float *x, int x_hwc, int64_t c, int64_t hw, int bits, uint64_t *out) {
    if (x == NULL || out == NULL || c < 1 || hw < 0 || bits < 1 || bits > 8) return MBK_EINVAL;
    const int64_t wc = n_words(c);
    const float top = (float)((1 << bits) - 1);
    memset(out, 0, (size_t)(bits * hw * wc) * sizeof(uint64_t));
    for (int64_t p = 0; p < hw; ++p)
        for (int64_t ch = 0; ch < c; ++ch) {
            const unsigned q = level_of(x_hwc ? x[p * c + ch] : x[ch * hw + p], top);
            uint64_t *word = out + p * wc + ch / 64;
            const int shift = (int)(ch % 64);
            for (int i = 0; i < bits; ++i) word[i * hw * wc] |= (uint64_t)((q >> i) & 1u) << shift;
        }
    return MBK_OK;
}

int mbs_accumulate(const int32_t *t, int planes, int i0, int64_t rows, int64_t o, int b, const int32_t *offset,
                   int offset_per_row, int32_t *d) {
    if (t == NULL || d == NULL || planes < 1 || i0 < 0 || i0 + planes > 8 || rows < 0 || o < 1 || b < 1 || b > 8
        || (i0 == 0 && offset == NULL))
        return MBK_EINVAL;
    for (int pi = 0; pi < planes; ++pi) {
        const int i = i0 + pi;
        for (int64_t r = 0; r < rows; ++r) {
            const int32_t *trow = t + (pi * rows + r) * b * o;
            int32_t *drow = d + r * o;
            for (int j = 0; j < b; ++j) {
                const int32_t *tj = trow + j * o;
                if (i == 0 && j == 0) { /* d = offset + floor(T_00 / 2): with the offset's floor, exact */
                    const int32_t *off = offset + (offset_per_row ? r * o : 0);
                    for (int64_t n = 0; n < o; ++n) drow[n] = to_i32((uint32_t)off[n] + (uint32_t)floor_half(tj[n]));
                } else {
                    const int s = i + j - 1;
                    for (int64_t n = 0; n < o; ++n) drow[n] = to_i32((uint32_t)drow[n] + ((uint32_t)tj[n] << s));
                }
            }
        }
    }
    return MBK_OK;
}

int mbs_epilogue_f32(const int32_t *d, int64_t rows, int64_t o, float den, const float *alpha, const float *bias,
                     const float *post_scale, const float *post_shift, float *y) {
    if (d == NULL || y == NULL || rows < 0 || o < 1 || (post_scale == NULL) != (post_shift == NULL))
        return MBK_EINVAL;
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t n = 0; n < o; ++n) {
            float v = (float)d[r * o + n] / den;
            if (alpha != NULL) v = v * alpha[n];
            if (bias != NULL) v = v + bias[n];
            if (post_scale != NULL) {
                v = v * post_scale[n];
                v = v + post_shift[n];
            }
            y[r * o + n] = v;
        }
    return MBK_OK;
}

int mbs_levels_pack(const int32_t *d, int64_t rows, int64_t o, const int32_t *thr, int64_t levels,
                    const uint8_t *rising, int bits, uint64_t *out) {
    if (d == NULL || thr == NULL || rising == NULL || out == NULL || rows < 0 || o < 1 || bits < 1 || bits > 8
        || levels < 0 || levels >= ((int64_t)1 << bits))
        return MBK_EINVAL;
    const int64_t wo = n_words(o);
    memset(out, 0, (size_t)(bits * rows * wo) * sizeof(uint64_t));
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t n = 0; n < o; ++n) {
            const int32_t v = d[r * o + n];
            const int32_t *tn = thr + n * levels;
            unsigned q = 0;
            if (rising[n])
                for (int64_t l = 0; l < levels; ++l) q += v >= tn[l];
            else
                for (int64_t l = 0; l < levels; ++l) q += v <= tn[l];
            uint64_t *word = out + r * wo + n / 64;
            const int shift = (int)(n % 64);
            for (int i = 0; i < bits; ++i) word[i * rows * wo] |= (uint64_t)((q >> i) & 1u) << shift;
        }
    return MBK_OK;
}
