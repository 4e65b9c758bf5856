/* minibnn native kernels: sign-and-pack, xnor/popcount GEMM and packed binary convolution.
 *
 * Semantics (DESIGN.md): bit 1 means +1 (x >= 0), bits are packed LSB-first along the reduction
 * axis into uint64 words, the tail bits of the last word are 0, and the +-1 dot product of two
 * packed rows of true length K is K - 2 * popcount(a XOR b).
 *
 * Every array is C-contiguous, allocated by the caller, and never read or written outside the
 * sizes passed in. Functions that can fail return MBK_OK (0) or an MBK_E* code.
 * Threads: OpenMP when compiled with it; the count comes from mbk_set_num_threads, else the
 * environment (MINIBNN_NUM_THREADS, then OMP_NUM_THREADS). Results do not depend on it.
 */
#ifndef MINIBNN_KERNELS_H
#define MINIBNN_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MBK_OK 0
#define MBK_EINVAL 1 /* a size or argument is out of range */
#define MBK_ENOMEM 2 /* a scratch buffer could not be allocated */

#define MBK_SIMD_AUTO 0   /* the best path this CPU supports */
#define MBK_SIMD_SCALAR 1 /* the portable scalar path only (for tests) */

int mbk_version(void);
const char *mbk_simd_name(void); /* "avx2", "neon" or "scalar": the path the kernels take now */
int mbk_set_simd(int mode);      /* MBK_SIMD_AUTO or MBK_SIMD_SCALAR; returns MBK_OK or MBK_EINVAL */
int mbk_has_openmp(void);
int mbk_set_num_threads(int n); /* n >= 1; without OpenMP the count stays 1 */
int mbk_get_num_threads(void);

/* x (rows, k) float32 -> out (rows, ceil(k/64)) words: bit = x >= 0, tail bits 0. */
int mbk_pack_rows_f32(const float *x, int64_t rows, int64_t k, uint64_t *out);
/* x (outer, c, inner) float32 -> out (outer, inner, ceil(c/64)): packs the middle axis
 * (NCHW -> NHWC words with outer = N, inner = H*W). */
int mbk_pack_channels_f32(const float *x, int64_t outer, int64_t c, int64_t inner, uint64_t *out);
/* out[r] = popcount of row r of a (rows, words). */
int mbk_popcount_rows(const uint64_t *a, int64_t rows, int64_t words, int32_t *out);

/* out (m, n) int32: out[i, j] = k - 2 * popcount(a[i] XOR b[j]); a (m, words), b (n, words),
 * words == ceil(k / 64). */
int mbk_xnor_gemm(const uint64_t *a, const uint64_t *b, int64_t m, int64_t n, int64_t words,
                  int64_t k, int32_t *out);
/* out (m, n) float32: out[i, j] = scale[j] * dot + bias[j] (float32, multiply then add). */
int mbk_xnor_gemm_affine(const uint64_t *a, const uint64_t *b, int64_t m, int64_t n, int64_t words,
                         int64_t k, const float *scale, const float *bias, float *out);

/* out (m, ceil(n / 64)) uint64 words, bits LSB first: bit j of row i = (dot[i, j] >= thr[j]) != flip[j]
 * (flip[j] is 0 or 1), tail bits 0. The integer threshold a folded batch norm + sign becomes. */
int mbk_xnor_gemm_threshold(const uint64_t *a, const uint64_t *b, int64_t m, int64_t n, int64_t words,
                            int64_t k, const int32_t *thr, const uint8_t *flip, uint64_t *out);

/* Binary convolution on channel-packed words.
 * x (batch, h, w, wc) and wt (o, kh, kw, wc) with wc == ceil(c / 64); output (batch, oh, ow, o)
 * with oh = (h + 2 ph - kh) / sh + 1 (same for ow). pad_value -1: padded bits 0; +1: padded bits 1
 * on the c valid bits only; 0: computed as -1 and then `correction` (oh, ow, o) is added (it must
 * then be given, see mbk_conv_pad_correction). Exactly one output is non-NULL: out (int32),
 * out_f (float32, out_f = scale[o] * y + bias[o]; scale and bias needed) or out_bits (packed
 * (batch, oh, ow, ceil(o / 64)) words as mbk_xnor_gemm_threshold writes them; thr and flip needed). */
int mbk_binary_conv2d(const uint64_t *x, const uint64_t *wt, int64_t batch, int64_t h, int64_t w,
                      int64_t c, int64_t o, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                      int64_t ph, int64_t pw, int pad_value, const int32_t *correction,
                      const float *scale, const float *bias, const int32_t *thr, const uint8_t *flip,
                      int32_t *out, float *out_f, uint64_t *out_bits);
/* Scratch: built with MBK_STATIC_SCRATCH (no OpenMP), every call takes its scratch memory from the
 * buffer given here (at least mbk_scratch_bytes of the largest call); otherwise this returns
 * MBK_EINVAL and the kernels use malloc. */
int mbk_set_scratch(void *buffer, int64_t bytes);
/* Bytes of scratch one call needs: a GEMM (m, n, words) or a convolution (m = batch*oh*ow, n = o,
 * words = kh*kw*wc, conv_kw = kw, conv_wc = wc), or mbk_conv_pad_correction (conv_o = o, conv_taps
 * = kh*kw); the largest of the cases given. -1 for a negative argument. */
int64_t mbk_scratch_bytes(int64_t m, int64_t n, int64_t words, int64_t conv_kw, int64_t conv_wc,
                          int64_t conv_o, int64_t conv_taps);
/* correction (oh, ow, o): for each output position, the sum over its kernel taps that fall in the
 * padding of s[o, tap] = sum over channels of the +-1 weight (what -1 padding took away). */
int mbk_conv_pad_correction(const uint64_t *wt, int64_t o, int64_t kh, int64_t kw, int64_t c,
                            int64_t h, int64_t w, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                            int32_t *correction);

#ifdef __cplusplus
}
#endif

#endif /* MINIBNN_KERNELS_H */
