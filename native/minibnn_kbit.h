/* minibnn bit-serial helpers for exported C programs (minibnn.deploy.export_c): the k-bit layers
 * (act_bit a = 2..8, weight_bit b = 1..8) around the binary kernels of minibnn_kernels.h, exactly as
 * minibnn.backend.bitserial and minibnn.deploy.ops compute them.
 *
 * Bit planes: plane i holds bit i of each integer level, packed LSB first along the channels into
 * uint64 words (tail bits 0), one plane after the other: (bits, pixels, ceil(c / 64)) words.
 * The integer dot D of a layer is offset + the terms T_ij = a-plane i x b-plane j, which come from
 * mbk_xnor_gemm / mbk_binary_conv2d (int32 out) with the b weight planes stacked as b * o rows:
 *   D = offset + floor(T_00 / 2) + sum over (i, j) != (0, 0) of 2^(i + j - 1) T_ij   (modulo 2^32, exact)
 * with the weight-only offset precomputed in Python (bitserial.gemm_offset / conv_offset).
 *
 * Every array is contiguous, allocated by the caller, and only the sizes passed in are read and
 * written; nothing is allocated. Functions return 0 (MBK_OK) or 1 (MBK_EINVAL: a bad argument).
 */
#ifndef MINIBNN_KBIT_H
#define MINIBNN_KBIT_H
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif

/* Float activations -> their `bits` bit planes (bits 1..8): level = round(clip(x, 0, 1) * (2^bits - 1)),
 * float32, ties to even, NaN -> 0 (as the packed model's _planes_in). x is channels-first (c, hw)
 * (x_hwc = 0) or channels-last (hw, c) (x_hwc = 1); out (bits, hw, ceil(c / 64)). */
int mbs_pack_levels_f32(const float *x, int x_hwc, int64_t c, int64_t hw, int bits, uint64_t *out);

/* d (rows, o) int32 += the terms of activation planes i0 .. i0 + planes - 1: t (planes, rows, b * o) int32,
 * plane p of t holding T_(i0 + p) j in its columns j * o .. j * o + o - 1. i0 == 0 first sets d to
 * offset: (o,) per channel, or (rows, o) with offset_per_row. */
int mbs_accumulate(const int32_t *t, int planes, int i0, int64_t rows, int64_t o, int b, const int32_t *offset,
                   int offset_per_row, int32_t *d);

/* y (rows, o) float32 = float(d) / den, then * alpha[o], + bias[o], then * post_scale[o] + post_shift[o]:
 * each a separate float32 operation in this order, a NULL array skips its step (post_scale and
 * post_shift go together). */
int mbs_epilogue_f32(const int32_t *d, int64_t rows, int64_t o, float den, const float *alpha, const float *bias,
                     const float *post_scale, const float *post_shift, float *y);

/* The next layer's levels as bit planes: level[r, o] = the number of thr[o, 0 .. levels - 1] that
 * d[r, o] passes (d >= t where rising[o], else d <= t), levels < 2^bits; out (bits, rows, ceil(o / 64)). */
int mbs_levels_pack(const int32_t *d, int64_t rows, int64_t o, const int32_t *thr, int64_t levels,
                    const uint8_t *rising, int bits, uint64_t *out);

#ifdef __cplusplus
}
#endif
#endif /* MINIBNN_KBIT_H */
