/* minibnn inference ops for exported C programs (minibnn.deploy.export_c): the float layers around
 * the binary kernels of minibnn_kernels.h, for one sample at a time.
 *
 * Float tensors are channels-first (C, H, W) and contiguous; binary layers work on channels-last
 * words (H, W, ceil(C/64)) from mbk_pack_channels_f32. Every function reads and writes only the
 * sizes passed in, allocates nothing, and computes the float32 operations of minibnn's NumPy layers
 * in the same order where that is cheap (batch norm, pooling, quantization, epilogues: bit for bit);
 * convolutions and dense layers sum in another order than BLAS (equal within rounding).
 */
#ifndef MINIBNN_INFER_H
#define MINIBNN_INFER_H
#include <stdint.h>
#ifdef __cplusplus
#define MBI_RESTRICT __restrict
extern "C" {
#else
#define MBI_RESTRICT restrict /* outputs never overlap inputs: lets the compiler vectorize */
#endif

/* Channels-last y (oh, ow, o) = sum over (kh, kw, c) of wt (kh, kw, c, o) * x + bias (NULL: none), x
 * channels-first (c, h, w) or, with x_hwc, channels-last (h, w, c); taps in the padding read `pad`
 * (0 for float layers, +-1 for a quantized input padded with pad_value). */
void mbi_conv2d(const float *MBI_RESTRICT x, int x_hwc, int64_t c, int64_t h, int64_t w,
                const float *MBI_RESTRICT wt, int64_t o, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                int64_t pw, int64_t dh, int64_t dw, float pad, const float *MBI_RESTRICT bias, float *MBI_RESTRICT y);
/* y (o) = wt (o, k) . x (k) + bias (NULL: none) */
void mbi_dense(const float *MBI_RESTRICT x, int64_t k, const float *MBI_RESTRICT wt, int64_t o, const float *MBI_RESTRICT bias, float *MBI_RESTRICT y);
/* y (c, hw) = x * scale[c] + shift[c] (scale NULL: 1), multiply then add (batch norm in inference);
 * mbi_affine_hwc: the same on channels-last (hw, c) */
void mbi_affine(const float *MBI_RESTRICT x, int64_t c, int64_t hw, const float *MBI_RESTRICT scale, const float *MBI_RESTRICT shift, float *MBI_RESTRICT y);
void mbi_affine_hwc(const float *MBI_RESTRICT x, int64_t hw, int64_t c, const float *MBI_RESTRICT scale, const float *MBI_RESTRICT shift, float *MBI_RESTRICT y);
/* layout changes: channels-last x (hw, c) -> channels-first y (c, hw), and back */
void mbi_hwc_to_chw(const float *MBI_RESTRICT x, int64_t hw, int64_t c, float *MBI_RESTRICT y);
void mbi_chw_to_hwc(const float *MBI_RESTRICT x, int64_t c, int64_t hw, float *MBI_RESTRICT y);
/* max pooling (padding -inf) and average pooling (padded zeros count, sum then divide) over (c, h, w) */
void mbi_max_pool2d(const float *MBI_RESTRICT x, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh,
                    int64_t sw, int64_t ph, int64_t pw, float *MBI_RESTRICT y);
void mbi_avg_pool2d(const float *MBI_RESTRICT x, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh,
                    int64_t sw, int64_t ph, int64_t pw, float *MBI_RESTRICT y);
/* the same two on channels-last x (h, w, c) -> y (oh, ow, c) */
void mbi_max_pool2d_hwc(const float *MBI_RESTRICT x, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw,
                        int64_t sh, int64_t sw, int64_t ph, int64_t pw, float *MBI_RESTRICT y);
void mbi_avg_pool2d_hwc(const float *MBI_RESTRICT x, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw,
                        int64_t sh, int64_t sw, int64_t ph, int64_t pw, float *MBI_RESTRICT y);
/* y (c) = mean over the pixels of x (c, hw), or of channels-last x (hw, c) with mbi_global_avg_pool2d_hwc */
void mbi_global_avg_pool2d(const float *MBI_RESTRICT x, int64_t c, int64_t hw, float *MBI_RESTRICT y);
void mbi_global_avg_pool2d_hwc(const float *MBI_RESTRICT x, int64_t hw, int64_t c, float *MBI_RESTRICT y);
void mbi_relu(const float *MBI_RESTRICT x, int64_t n, float *MBI_RESTRICT y);
void mbi_tanh(const float *MBI_RESTRICT x, int64_t n, float *MBI_RESTRICT y);
void mbi_hardtanh(const float *MBI_RESTRICT x, int64_t n, float lo, float hi, float *MBI_RESTRICT y);
void mbi_add(const float *MBI_RESTRICT a, const float *MBI_RESTRICT b, int64_t n, float *MBI_RESTRICT y);
/* Quantize activations as minibnn.quantize.quantize_activation: 1 bit: +1 where x >= 0, else -1;
 * 2..31 bits: round(clip(x, 0, 1) * (2^bits - 1)) / (2^bits - 1), ties to even; 32: a copy. */
void mbi_quantize(const float *MBI_RESTRICT x, int64_t n, int bits, float *MBI_RESTRICT y);

#ifdef __cplusplus
}
#endif
#endif /* MINIBNN_INFER_H */
