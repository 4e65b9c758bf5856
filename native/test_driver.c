/* Standalone test of the native kernels against plain scalar references, over odd sizes, on every
 * SIMD path this CPU has (auto and forced scalar) and with 1 and 2 threads. Every buffer is
 * allocated with its exact size, so an AddressSanitizer build (native/sanitize.sh) catches any
 * out-of-bounds access. Exit status 0 when everything matched.
 *
 *   cc -O2 -std=c11 native/test_driver.c native/minibnn_kernels.c -o driver && ./driver [cases]
 */
#include "minibnn_kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static uint64_t rng(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static int64_t pick(const int64_t *v, size_t n) { return v[rng() % n]; }

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* floats in [-1, 1) with some exact zeros, negative zeros and +-1 */
static void fill_floats(float *x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        const uint64_t r = rng();
        switch (r % 16) {
        case 0: x[i] = 0.0f; break;
        case 1: x[i] = -0.0f; break;
        case 2: x[i] = 1.0f; break;
        case 3: x[i] = -1.0f; break;
        default: x[i] = (float)((double)(r >> 11) / 9007199254740992.0 * 2.0 - 1.0);
        }
    }
}

static int sgn(float v) { return v >= 0.0f ? 1 : -1; }

static void check(int ok, const char *what, const char *detail) {
    if (!ok) {
        if (failures < 20) fprintf(stderr, "FAIL %s: %s\n", what, detail);
        ++failures;
    }
}

/* the configurations every kernel runs under */
static const int simd_modes[2] = {MBK_SIMD_AUTO, MBK_SIMD_SCALAR};
static const int thread_counts[2] = {1, 2};

static void set_config(int s, int t) {
    if (mbk_set_simd(simd_modes[s]) != MBK_OK) check(0, "set_simd", "rejected");
    if (mbk_set_num_threads(thread_counts[t]) != MBK_OK) check(0, "set_num_threads", "rejected");
}

static void test_pack_rows(int64_t rows, int64_t k) {
    const int64_t words = (k + 63) / 64;
    float *x = xmalloc((size_t)(rows * k) * sizeof(float));
    uint64_t *ref = xmalloc((size_t)(rows * words) * sizeof(uint64_t));
    uint64_t *got = xmalloc((size_t)(rows * words) * sizeof(uint64_t));
    fill_floats(x, rows * k);
    memset(ref, 0, (size_t)(rows * words) * sizeof(uint64_t));
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < k; ++i)
            if (x[r * k + i] >= 0.0f) ref[r * words + i / 64] |= (uint64_t)1 << (i % 64);
    char detail[128];
    snprintf(detail, sizeof detail, "rows=%lld k=%lld", (long long)rows, (long long)k);
    for (int s = 0; s < 2; ++s)
        for (int t = 0; t < 2; ++t) {
            set_config(s, t);
            memset(got, 0xA5, (size_t)(rows * words) * sizeof(uint64_t));
            check(mbk_pack_rows_f32(x, rows, k, got) == MBK_OK, "pack_rows rc", detail);
            check(memcmp(ref, got, (size_t)(rows * words) * sizeof(uint64_t)) == 0, "pack_rows", detail);
        }
    free(x), free(ref), free(got);
}

static void test_pack_channels(int64_t outer, int64_t c, int64_t inner) {
    const int64_t wc = (c + 63) / 64, nw = outer * inner * wc;
    float *x = xmalloc((size_t)(outer * c * inner) * sizeof(float));
    uint64_t *ref = xmalloc((size_t)nw * sizeof(uint64_t));
    uint64_t *got = xmalloc((size_t)nw * sizeof(uint64_t));
    fill_floats(x, outer * c * inner);
    memset(ref, 0, (size_t)nw * sizeof(uint64_t));
    for (int64_t o = 0; o < outer; ++o)
        for (int64_t ch = 0; ch < c; ++ch)
            for (int64_t p = 0; p < inner; ++p)
                if (x[(o * c + ch) * inner + p] >= 0.0f)
                    ref[(o * inner + p) * wc + ch / 64] |= (uint64_t)1 << (ch % 64);
    char detail[128];
    snprintf(detail, sizeof detail, "outer=%lld c=%lld inner=%lld", (long long)outer, (long long)c,
             (long long)inner);
    for (int s = 0; s < 2; ++s)
        for (int t = 0; t < 2; ++t) {
            set_config(s, t);
            memset(got, 0x5A, (size_t)nw * sizeof(uint64_t));
            check(mbk_pack_channels_f32(x, outer, c, inner, got) == MBK_OK, "pack_channels rc", detail);
            check(memcmp(ref, got, (size_t)nw * sizeof(uint64_t)) == 0, "pack_channels", detail);
        }
    free(x), free(ref), free(got);
}

static void random_words(uint64_t *a, int64_t rows, int64_t k) {
    const int64_t words = (k + 63) / 64;
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t q = 0; q < words; ++q) {
            uint64_t v = rng();
            const int64_t valid = k - 64 * q;
            if (valid < 64) v &= ((uint64_t)1 << valid) - 1; /* tail bits 0 */
            a[r * words + q] = v;
        }
}

/* Random thresholds near the values of ref (rows, n) and the packed bits they give: the reference
 * for the threshold outputs. Returns the words (rows, ceil(n / 64)); thr and flip are filled. */
static uint64_t *threshold_ref(const int32_t *ref, int64_t rows, int64_t n, int32_t *thr, uint8_t *flip) {
    const int64_t ow = (n + 63) / 64;
    uint64_t *bits = xmalloc((size_t)(rows * ow + 1) * sizeof(uint64_t));
    memset(bits, 0, (size_t)(rows * ow + 1) * sizeof(uint64_t));
    for (int64_t j = 0; j < n; ++j) {
        thr[j] = rows ? ref[(int64_t)(rng() % (uint64_t)rows) * n + j] + (int32_t)(rng() % 3) - 1 : 0;
        flip[j] = (uint8_t)(rng() % 2);
    }
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < n; ++j)
            if ((ref[i * n + j] >= thr[j]) != flip[j]) bits[i * ow + j / 64] |= (uint64_t)1 << (j % 64);
    return bits;
}

static void test_gemm(int64_t m, int64_t n, int64_t k) {
    const int64_t words = (k + 63) / 64;
    uint64_t *a = xmalloc((size_t)(m * words) * sizeof(uint64_t));
    uint64_t *b = xmalloc((size_t)(n * words) * sizeof(uint64_t));
    int32_t *ref = xmalloc((size_t)(m * n) * sizeof(int32_t));
    int32_t *got = xmalloc((size_t)(m * n) * sizeof(int32_t));
    float *scale = xmalloc((size_t)n * sizeof(float)), *bias = xmalloc((size_t)n * sizeof(float));
    float *fref = xmalloc((size_t)(m * n) * sizeof(float)), *fgot = xmalloc((size_t)(m * n) * sizeof(float));
    random_words(a, m, k);
    random_words(b, n, k);
    fill_floats(scale, n);
    fill_floats(bias, n);
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
            int64_t dot = 0; /* bit by bit: +1 when the bits agree */
            for (int64_t t = 0; t < k; ++t) {
                const int ba = (int)(a[i * words + t / 64] >> (t % 64)) & 1;
                const int bb = (int)(b[j * words + t / 64] >> (t % 64)) & 1;
                dot += ba == bb ? 1 : -1;
            }
            ref[i * n + j] = (int32_t)dot;
            const float y = (float)dot * scale[j];
            fref[i * n + j] = y + bias[j];
        }
    char detail[128];
    snprintf(detail, sizeof detail, "m=%lld n=%lld k=%lld", (long long)m, (long long)n, (long long)k);
    int32_t *thr = xmalloc((size_t)n * sizeof(int32_t));
    uint8_t *flip = xmalloc((size_t)n);
    uint64_t *bref = threshold_ref(ref, m, n, thr, flip);
    const size_t bbytes = (size_t)(m * ((n + 63) / 64)) * sizeof(uint64_t);
    uint64_t *bgot = xmalloc(bbytes + sizeof(uint64_t));
    for (int s = 0; s < 2; ++s)
        for (int t = 0; t < 2; ++t) {
            set_config(s, t);
            memset(bgot, 0xA5, bbytes);
            check(mbk_xnor_gemm_threshold(a, b, m, n, words, k, thr, flip, bgot) == MBK_OK, "threshold rc", detail);
            check(memcmp(bref, bgot, bbytes) == 0, "gemm threshold", detail);
            memset(got, 0x7F, (size_t)(m * n) * sizeof(int32_t));
            check(mbk_xnor_gemm(a, b, m, n, words, k, got) == MBK_OK, "gemm rc", detail);
            check(memcmp(ref, got, (size_t)(m * n) * sizeof(int32_t)) == 0, "gemm", detail);
            memset(fgot, 0x7F, (size_t)(m * n) * sizeof(float));
            check(mbk_xnor_gemm_affine(a, b, m, n, words, k, scale, bias, fgot) == MBK_OK, "affine rc", detail);
            check(memcmp(fref, fgot, (size_t)(m * n) * sizeof(float)) == 0, "gemm affine", detail);
        }
    int32_t *pop = xmalloc((size_t)m * sizeof(int32_t));
    check(mbk_popcount_rows(a, m, words, pop) == MBK_OK, "popcount rc", detail);
    for (int64_t i = 0; i < m; ++i) {
        int64_t ones = 0;
        for (int64_t t = 0; t < k; ++t) ones += (int64_t)(a[i * words + t / 64] >> (t % 64)) & 1;
        check(pop[i] == ones, "popcount_rows", detail);
    }
    free(pop);
    free(a), free(b), free(ref), free(got), free(scale), free(bias), free(fref), free(fgot);
    free(thr), free(flip), free(bref), free(bgot);
}

static int64_t out_size(int64_t size, int64_t kernel, int64_t stride, int64_t pad) {
    return (size + 2 * pad - kernel) / stride + 1;
}

static void test_conv(int64_t batch, int64_t c, int64_t h, int64_t w, int64_t o, int64_t kh, int64_t kw,
                      int64_t sh, int64_t sw, int64_t ph, int64_t pw, int pad_value) {
    if (h + 2 * ph < kh || w + 2 * pw < kw) return;
    const int64_t wc = (c + 63) / 64, oh = out_size(h, kh, sh, ph), ow = out_size(w, kw, sw, pw);
    const int64_t nout = batch * oh * ow * o;
    float *x = xmalloc((size_t)(batch * c * h * w) * sizeof(float));
    float *wf = xmalloc((size_t)(o * c * kh * kw) * sizeof(float));   /* (o, c, kh, kw) */
    float *wl = xmalloc((size_t)(o * kh * kw * c) * sizeof(float));   /* (o, kh, kw, c) */
    uint64_t *xw = xmalloc((size_t)(batch * h * w * wc) * sizeof(uint64_t));
    uint64_t *ww = xmalloc((size_t)(o * kh * kw * wc) * sizeof(uint64_t));
    int32_t *corr = xmalloc((size_t)(oh * ow * o) * sizeof(int32_t));
    int32_t *ref = xmalloc((size_t)nout * sizeof(int32_t)), *got = xmalloc((size_t)nout * sizeof(int32_t));
    float *scale = xmalloc((size_t)o * sizeof(float)), *bias = xmalloc((size_t)o * sizeof(float));
    float *fref = xmalloc((size_t)nout * sizeof(float)), *fgot = xmalloc((size_t)nout * sizeof(float));
    fill_floats(x, batch * c * h * w);
    fill_floats(wf, o * c * kh * kw);
    fill_floats(scale, o);
    fill_floats(bias, o);
    for (int64_t oc = 0; oc < o; ++oc)
        for (int64_t ch = 0; ch < c; ++ch)
            for (int64_t i = 0; i < kh; ++i)
                for (int64_t j = 0; j < kw; ++j)
                    wl[((oc * kh + i) * kw + j) * c + ch] = wf[((oc * c + ch) * kh + i) * kw + j];
    /* float reference: sign(x) padded with pad_value, against sign(w) */
    for (int64_t n = 0; n < batch; ++n)
        for (int64_t oy = 0; oy < oh; ++oy)
            for (int64_t ox = 0; ox < ow; ++ox)
                for (int64_t oc = 0; oc < o; ++oc) {
                    int64_t acc = 0;
                    for (int64_t ch = 0; ch < c; ++ch)
                        for (int64_t i = 0; i < kh; ++i)
                            for (int64_t j = 0; j < kw; ++j) {
                                const int64_t iy = oy * sh - ph + i, ix = ox * sw - pw + j;
                                const int xv = (iy >= 0 && iy < h && ix >= 0 && ix < w)
                                                   ? sgn(x[((n * c + ch) * h + iy) * w + ix]) : pad_value;
                                acc += xv * sgn(wf[((oc * c + ch) * kh + i) * kw + j]);
                            }
                    const int64_t idx = ((n * oh + oy) * ow + ox) * o + oc;
                    ref[idx] = (int32_t)acc;
                    const float y = (float)acc * scale[oc];
                    fref[idx] = y + bias[oc];
                }
    char detail[200];
    snprintf(detail, sizeof detail, "batch=%lld c=%lld hw=%lldx%lld o=%lld k=%lldx%lld s=%lld,%lld p=%lld,%lld pad=%d",
             (long long)batch, (long long)c, (long long)h, (long long)w, (long long)o, (long long)kh,
             (long long)kw, (long long)sh, (long long)sw, (long long)ph, (long long)pw, pad_value);
    int32_t *thr = xmalloc((size_t)o * sizeof(int32_t));
    uint8_t *flip = xmalloc((size_t)o);
    uint64_t *bref = threshold_ref(ref, batch * oh * ow, o, thr, flip);
    const size_t bbytes = (size_t)(batch * oh * ow * ((o + 63) / 64)) * sizeof(uint64_t);
    uint64_t *bgot = xmalloc(bbytes + sizeof(uint64_t));
    for (int s = 0; s < 2; ++s)
        for (int t = 0; t < 2; ++t) {
            set_config(s, t);
            check(mbk_pack_channels_f32(x, batch, c, h * w, xw) == MBK_OK, "conv pack x", detail);
            check(mbk_pack_rows_f32(wl, o * kh * kw, c, ww) == MBK_OK, "conv pack w", detail);
            check(mbk_conv_pad_correction(ww, o, kh, kw, c, h, w, sh, sw, ph, pw, corr) == MBK_OK,
                  "correction rc", detail);
            memset(got, 0x7F, (size_t)nout * sizeof(int32_t));
            check(mbk_binary_conv2d(xw, ww, batch, h, w, c, o, kh, kw, sh, sw, ph, pw, pad_value,
                                    pad_value == 0 ? corr : NULL, NULL, NULL, NULL, NULL, got, NULL, NULL)
                      == MBK_OK,
                  "conv rc", detail);
            check(memcmp(ref, got, (size_t)nout * sizeof(int32_t)) == 0, "conv", detail);
            memset(fgot, 0x7F, (size_t)nout * sizeof(float));
            check(mbk_binary_conv2d(xw, ww, batch, h, w, c, o, kh, kw, sh, sw, ph, pw, pad_value,
                                    pad_value == 0 ? corr : NULL, scale, bias, NULL, NULL, NULL, fgot, NULL)
                      == MBK_OK,
                  "conv affine rc", detail);
            check(memcmp(fref, fgot, (size_t)nout * sizeof(float)) == 0, "conv affine", detail);
            memset(bgot, 0xA5, bbytes);
            check(mbk_binary_conv2d(xw, ww, batch, h, w, c, o, kh, kw, sh, sw, ph, pw, pad_value,
                                    pad_value == 0 ? corr : NULL, NULL, NULL, thr, flip, NULL, NULL, bgot)
                      == MBK_OK,
                  "conv threshold rc", detail);
            check(memcmp(bref, bgot, bbytes) == 0, "conv threshold", detail);
        }
    free(x), free(wf), free(wl), free(xw), free(ww), free(corr), free(ref), free(got);
    free(scale), free(bias), free(fref), free(fgot), free(thr), free(flip), free(bref), free(bgot);
}

static void test_errors(void) {
    uint64_t a[2] = {0, 0};
    int32_t out[4];
    check(mbk_xnor_gemm(a, a, 1, 1, 2, 64, out) == MBK_EINVAL, "errors", "words != ceil(k/64)");
    check(mbk_xnor_gemm(a, a, -1, 1, 1, 64, out) == MBK_EINVAL, "errors", "negative m");
    check(mbk_xnor_gemm(a, a, 1, 1, 1, 64, NULL) == MBK_EINVAL, "errors", "NULL out");
    check(mbk_binary_conv2d(a, a, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 2, NULL, NULL, NULL, NULL, NULL, out, NULL, NULL) == MBK_EINVAL,
          "errors", "pad_value 2");
    check(mbk_binary_conv2d(a, a, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL, NULL, NULL, out, NULL, NULL) == MBK_EINVAL,
          "errors", "pad_value 0 without correction");
    check(mbk_binary_conv2d(a, a, 1, 1, 1, 1, 1, 3, 3, 1, 1, 0, 0, 1, NULL, NULL, NULL, NULL, NULL, out, NULL, NULL)
              == MBK_EINVAL,
          "errors", "kernel larger than the padded input");
    check(mbk_binary_conv2d(a, a, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, NULL, NULL, NULL, NULL, NULL, out, NULL,
                            a) == MBK_EINVAL,
          "errors", "two outputs");
    check(mbk_xnor_gemm_threshold(a, a, 1, 1, 1, 64, NULL, NULL, a) == MBK_EINVAL, "errors", "threshold without thr");
    check(mbk_set_num_threads(0) == MBK_EINVAL, "errors", "0 threads");
    check(mbk_set_simd(7) == MBK_EINVAL, "errors", "simd mode 7");
    check(mbk_xnor_gemm(NULL, NULL, 0, 0, 1, 64, NULL) == MBK_OK, "errors", "empty gemm");
    check(mbk_xnor_gemm(a, a, 1, 1, 0, 0, out) == MBK_OK && out[0] == 0, "errors", "k == 0");
}

int main(int argc, char **argv) {
    const int cases = argc > 1 ? atoi(argv[1]) : 60;
    printf("minibnn native test driver: simd=%s openmp=%d threads=%d\n", mbk_simd_name(), mbk_has_openmp(),
           mbk_get_num_threads());
    static const int64_t ks[] = {1, 2, 63, 64, 65, 127, 128, 129, 191, 300, 576, 1000, 64 * 31, 64 * 31 + 1,
                                 64 * 62 + 5, 4608};
    static const int64_t mns[] = {1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 33, 64, 65};
    static const int64_t chans[] = {1, 3, 17, 63, 64, 65, 100, 130};
    static const int64_t sides[] = {1, 2, 3, 4, 5, 7, 9};
    static const int64_t kernels[] = {1, 2, 3, 5};
    static const int64_t outs[] = {1, 3, 8, 9, 16};
    const size_t nk = sizeof ks / sizeof ks[0], nmn = sizeof mns / sizeof mns[0];
    test_errors();
    for (size_t i = 0; i < nk; ++i) test_pack_rows(pick(mns, nmn), ks[i]);
    for (int i = 0; i < cases; ++i) test_pack_rows(pick(mns, nmn), pick(ks, nk));
    for (int i = 0; i < cases; ++i)
        test_pack_channels(1 + (int64_t)(rng() % 3), pick(chans, 8), 1 + (int64_t)(rng() % 150));
    for (size_t i = 0; i < nk; ++i) test_gemm(pick(mns, nmn), pick(mns, nmn), ks[i]);
    for (int i = 0; i < cases; ++i) test_gemm(pick(mns, nmn), pick(mns, nmn), pick(ks, nk));
    test_gemm(130, 70, 257); /* several row blocks and panels */
    test_gemm(600, 300, 1500); /* >= 2^22 word pairs: split over the threads */
    for (int i = 0; i < 2 * cases; ++i) {
        const int pad_value = (int)(rng() % 3) - 1;
        test_conv(1 + (int64_t)(rng() % 2), pick(chans, 8), pick(sides, 7), pick(sides, 7), pick(outs, 5),
                  pick(kernels, 4), pick(kernels, 4), 1 + (int64_t)(rng() % 3), 1 + (int64_t)(rng() % 2),
                  (int64_t)(rng() % 3), (int64_t)(rng() % 3), pad_value);
    }
    test_conv(2, 64, 12, 12, 20, 3, 3, 1, 1, 1, 1, 0); /* more than one row block */
    test_conv(4, 64, 48, 48, 64, 3, 3, 1, 1, 1, 1, 0); /* split over the threads */
    mbk_set_simd(MBK_SIMD_AUTO);
    if (failures) {
        printf("%d failed\n", failures);
        return 1;
    }
    printf("all kernels match the scalar references\n");
    return 0;
}
