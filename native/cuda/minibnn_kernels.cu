// minibnn's CUDA kernels: the kernel table of minibnn/backend/cuda.py (compiled at run time with
// cupy.RawModule / NVRTC; nvcc compiles it too). Semantics as in DESIGN.md and numpy_ref.py:
//   bit 1 = x >= 0 (NaN -> 0, -0.0 -> 1), LSB first along the reduction axis in uint64 words, tail
//   bits 0; dot = K - 2 * popcount(a XOR b); affine out = float32(dot) * scale + bias rounded after
//   the multiply and after the add; threshold bit = (dot >= threshold) != flip, packed LSB first.
//
// Rules of this file, so that tests/cuda_emu can run every kernel exactly on the host (g++ with a
// shim header): plain C++14, no #include, no shared memory, no __syncthreads, no warp intrinsics,
// no atomics -- every thread is independent and writes only its own outputs. Index arithmetic that
// can pass 2^31 is 64-bit. Float epilogues use __fmul_rn / __fadd_rn (NVRTC would otherwise contract
// a * b + c into an FMA and round once). The CUDA-core path only (__popcll); no tensor cores here.
//
// Launch shapes (cuda.py plans them and mirrors MBK_TM / MBK_TN / MBK_TW / MBK_GEMM_THREADS; a test
// checks that they agree):
//   pack, popcount, correction: 1-D, one thread per output element (word / row / entry).
//   xnor_gemm(_affine), binary_conv2d(_affine): 2-D blocks (bx, by), a 1-D grid of block tiles of
//     (by * MBK_TM) rows x (bx * MBK_TN) columns; each thread owns MBK_TM consecutive rows (GEMM
//     rows or output pixels) and MBK_TN columns strided by bx, i.e. a register tile of
//     MBK_TM x MBK_TN dot products.
//   *_threshold: 1-D, one thread per (row, output word): 64 consecutive output columns of one row;
//     rows vary fastest so the threads of a warp read the same weight rows.
// `vec` != 0 (chosen by cuda.py: an even word count and 16-byte aligned operands) reads two words
// at a time with 16-byte loads. Convolution taps that fall in the padding read `pad`, one pixel's
// words made by cuda.py (0 for pad_value -1 and 0, ones on the valid channel bits for +1); pad_value
// 0 then adds the correction (conv_pad_correction) to the dot product.

typedef unsigned long long u64;
typedef long long i64;

#define MBK_TM 8   // rows per thread, int32 / float32 GEMM and convolution kernels
#define MBK_TN 4   // columns per thread there
#define MBK_TW 64  // columns per thread in the threshold kernels: one packed output word
#define MBK_TC 16  // threshold kernels: columns per step (steps past the last column are skipped)
#define MBK_GEMM_THREADS 128  // threads a block of the GEMM kernels may have (__launch_bounds__)

__device__ __forceinline__ unsigned int popxor(u64 a, u64 b) { return (unsigned int)__popcll(a ^ b); }

__device__ __forceinline__ i64 global_thread() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }

__device__ __forceinline__ i64 min64(i64 a, i64 b) { return a < b ? a : b; }

// ------------------------------------------------------------------ packing

__device__ __forceinline__ bool sign_bit(float v) { return v >= 0.0f; }          // NaN -> 0, -0.0 -> 1
__device__ __forceinline__ bool sign_bit(double v) { return v >= 0.0; }
__device__ __forceinline__ bool sign_bit(unsigned char v) { return v != 0; }     // a bool array

// x viewed as (outer, k, inner), C-contiguous: out (outer, inner, ceil(k / 64)) words. One thread per
// output word; consecutive threads take consecutive `inner` positions (coalesced reads of x).
template <typename T>
__device__ __forceinline__ void pack_sign(const T* __restrict__ x, i64 outer, i64 k, i64 inner,
                                          u64* __restrict__ out) {
    const i64 words = (k + 63) / 64;
    const i64 t = global_thread();
    if (t >= outer * words * inner) return;
    const i64 i = t % inner, r = t / inner;
    const i64 j = r % words, o = r / words;
    const i64 start = j * 64;
    const int n = (int)min64(64, k - start);
    const T* p = x + (o * k + start) * inner + i;
    u64 word = 0;
    for (int b = 0; b < n; ++b) word |= (u64)sign_bit(__ldg(p + b * inner)) << b;
    out[(o * inner + i) * words + j] = word;
}

extern "C" __global__ void mbk_pack_f32(const float* __restrict__ x, i64 outer, i64 k, i64 inner,
                                        u64* __restrict__ out) {
    pack_sign(x, outer, k, inner, out);
}

extern "C" __global__ void mbk_pack_f64(const double* __restrict__ x, i64 outer, i64 k, i64 inner,
                                        u64* __restrict__ out) {
    pack_sign(x, outer, k, inner, out);
}

// bytes (a bool array: x >= 0 computed by CuPy for the other dtypes): bit = byte != 0
extern "C" __global__ void mbk_pack_u8(const unsigned char* __restrict__ x, i64 outer, i64 k, i64 inner,
                                       u64* __restrict__ out) {
    pack_sign(x, outer, k, inner, out);
}

extern "C" __global__ void mbk_popcount_rows(const u64* __restrict__ words, i64 rows, i64 w,
                                             int* __restrict__ out) {
    const i64 t = global_thread();
    if (t >= rows) return;
    const u64* p = words + t * w;
    i64 count = 0;
    for (i64 q = 0; q < w; ++q) count += __popcll(__ldg(p + q));
    out[t] = (int)count;
}

// ------------------------------------------------------------------ the register tile

// acc[i][j] += popcount(a[i][q] ^ b[j][q]) for q < nw: MBK_TM x MBK_TN dot products at once.
__device__ __forceinline__ void tile_accumulate(const u64* const (&a)[MBK_TM], const u64* const (&b)[MBK_TN],
                                                i64 nw, int vec, unsigned int (&acc)[MBK_TM][MBK_TN]) {
    i64 q = 0;
    if (vec) {
        for (; q + 1 < nw; q += 2) {
            ulonglong2 av[MBK_TM], bv[MBK_TN];
#pragma unroll
            for (int i = 0; i < MBK_TM; ++i) av[i] = __ldg(reinterpret_cast<const ulonglong2*>(a[i] + q));
#pragma unroll
            for (int j = 0; j < MBK_TN; ++j) bv[j] = __ldg(reinterpret_cast<const ulonglong2*>(b[j] + q));
#pragma unroll
            for (int i = 0; i < MBK_TM; ++i)
#pragma unroll
                for (int j = 0; j < MBK_TN; ++j) acc[i][j] += popxor(av[i].x, bv[j].x) + popxor(av[i].y, bv[j].y);
        }
    }
    for (; q < nw; ++q) {
        u64 av[MBK_TM], bv[MBK_TN];
#pragma unroll
        for (int i = 0; i < MBK_TM; ++i) av[i] = __ldg(a[i] + q);
#pragma unroll
        for (int j = 0; j < MBK_TN; ++j) bv[j] = __ldg(b[j] + q);
#pragma unroll
        for (int i = 0; i < MBK_TM; ++i)
#pragma unroll
            for (int j = 0; j < MBK_TN; ++j) acc[i][j] += popxor(av[i], bv[j]);
    }
}

// This thread's first row and first column (its columns are col0 + j * blockDim.x) for a problem
// with `cols` columns; false when the thread has no row or no column inside the problem.
__device__ __forceinline__ bool tile_origin(i64 rows, i64 cols, i64* row0, i64* col0) {
    const i64 span = (i64)blockDim.x * MBK_TN;
    const i64 tiles_n = (cols + span - 1) / span;
    const i64 bm = blockIdx.x / tiles_n, bn = blockIdx.x % tiles_n;
    *row0 = (bm * blockDim.y + threadIdx.y) * MBK_TM;
    *col0 = bn * span + threadIdx.x;
    return *row0 < rows && *col0 < cols;
}

// The epilogues. KIND 0: int32 dot; 1: float32 scale * dot + bias (two roundings).
template <int KIND>
__device__ __forceinline__ void store(i64 index, int dot, i64 col, const float* __restrict__ scale,
                                      const float* __restrict__ bias, int* __restrict__ out_i,
                                      float* __restrict__ out_f) {
    if (KIND == 0) {
        out_i[index] = dot;
    } else {
        out_f[index] = __fadd_rn(__fmul_rn((float)dot, __ldg(scale + col)), __ldg(bias + col));
    }
}

// ------------------------------------------------------------------ GEMM

// a (m, w) and b (n, w) packed rows; out (m, n): the +-1 dot products, through the epilogue KIND.
template <int KIND>
__device__ __forceinline__ void gemm_tile(const u64* __restrict__ a, const u64* __restrict__ b, i64 m, i64 n,
                                          i64 w, int k, int vec, const float* __restrict__ scale,
                                          const float* __restrict__ bias, int* __restrict__ out_i,
                                          float* __restrict__ out_f) {
    i64 row0, col0;
    if (!tile_origin(m, n, &row0, &col0)) return;
    const u64* ap[MBK_TM];
    const u64* bp[MBK_TN];
#pragma unroll
    for (int i = 0; i < MBK_TM; ++i) ap[i] = a + min64(row0 + i, m - 1) * w;  // edge rows: clamped, not stored
#pragma unroll
    for (int j = 0; j < MBK_TN; ++j) bp[j] = b + min64(col0 + (i64)j * blockDim.x, n - 1) * w;
    unsigned int acc[MBK_TM][MBK_TN] = {};
    tile_accumulate(ap, bp, w, vec, acc);
#pragma unroll
    for (int i = 0; i < MBK_TM; ++i) {
        const i64 r = row0 + i;
        if (r >= m) break;
#pragma unroll
        for (int j = 0; j < MBK_TN; ++j) {
            const i64 c = col0 + (i64)j * blockDim.x;
            if (c < n) store<KIND>(r * n + c, (int)((i64)k - 2 * (i64)acc[i][j]), c, scale, bias, out_i, out_f);
        }
    }
}

// At most 128 threads a block (cuda.py launches 8 x 16), at least 4 blocks an SM: 128 registers a
// thread, which the 8 x 4 tile fits without spills; 16 warps an SM keep the popc pipe busy.
extern "C" __global__ void __launch_bounds__(MBK_GEMM_THREADS, 4)
    mbk_xnor_gemm(const u64* __restrict__ a, const u64* __restrict__ b, i64 m, i64 n, i64 w, int k, int vec,
                  int* __restrict__ out) {
    gemm_tile<0>(a, b, m, n, w, k, vec, 0, 0, out, 0);
}

extern "C" __global__ void __launch_bounds__(MBK_GEMM_THREADS, 4)
    mbk_xnor_gemm_affine(const u64* __restrict__ a, const u64* __restrict__ b, i64 m, i64 n, i64 w, int k, int vec,
                         const float* __restrict__ scale, const float* __restrict__ bias, float* __restrict__ out) {
    gemm_tile<1>(a, b, m, n, w, k, vec, scale, bias, 0, out);
}

// ------------------------------------------------------------------ threshold (one output word per thread)

// acc[j] += popcount(a[q] ^ b_j[q]) for q < nw, with b_j = b + min(j, jmax) * stride: the 64
// columns of one output word (columns past jmax, i.e. past N, are clamped and later dropped).
__device__ __forceinline__ void word_accumulate(const u64* __restrict__ a, const u64* __restrict__ b, i64 stride,
                                                i64 nw, int vec, int jmax, unsigned int (&acc)[MBK_TW]) {
    i64 q = 0;
    if (vec) {
        for (; q + 1 < nw; q += 2) {
            const ulonglong2 av = __ldg(reinterpret_cast<const ulonglong2*>(a + q));
            const u64* bj = b + q;  // column j's words; stays on column jmax past it
#pragma unroll
            for (int j0 = 0; j0 < MBK_TW; j0 += MBK_TC) {
                if (j0 > jmax) break;
#pragma unroll
                for (int j = j0; j < j0 + MBK_TC; ++j) {
                    const ulonglong2 bv = __ldg(reinterpret_cast<const ulonglong2*>(bj));
                    acc[j] += popxor(av.x, bv.x) + popxor(av.y, bv.y);
                    bj += j < jmax ? stride : 0;
                }
            }
        }
    }
    for (; q < nw; ++q) {
        const u64 av = __ldg(a + q);
        const u64* bj = b + q;
#pragma unroll
        for (int j0 = 0; j0 < MBK_TW; j0 += MBK_TC) {
            if (j0 > jmax) break;
#pragma unroll
            for (int j = j0; j < j0 + MBK_TC; ++j) {
                acc[j] += popxor(av, __ldg(bj));
                bj += j < jmax ? stride : 0;
            }
        }
    }
}

// The packed word (dot_j + corr_j >= threshold[c0 + j]) != flip[c0 + j] for j <= jmax, 0 past it.
__device__ __forceinline__ u64 threshold_word(const unsigned int (&acc)[MBK_TW], int k, i64 c0, int jmax,
                                              const int* __restrict__ corr, const int* __restrict__ threshold,
                                              const unsigned char* __restrict__ flip) {
    u64 word = 0;
#pragma unroll
    for (int j = 0; j < MBK_TW; ++j) {
        if (j > jmax) break;
        i64 dot = (i64)k - 2 * (i64)acc[j];
        if (corr) dot += __ldg(corr + j);
        const bool bit = (dot >= (i64)__ldg(threshold + c0 + j)) != (__ldg(flip + c0 + j) != 0);
        word |= (u64)bit << j;
    }
    return word;
}

// out (m, ceil(n / 64)) words; thread t: row t % m, word t / m.
extern "C" __global__ void mbk_xnor_gemm_threshold(const u64* __restrict__ a, const u64* __restrict__ b, i64 m,
                                                   i64 n, i64 w, int k, int vec, const int* __restrict__ threshold,
                                                   const unsigned char* __restrict__ flip, u64* __restrict__ out) {
    const i64 words = (n + 63) / 64;
    const i64 t = global_thread();
    if (t >= m * words) return;
    const i64 r = t % m, word = t / m, c0 = word * MBK_TW;
    const int jmax = (int)min64(MBK_TW, n - c0) - 1;
    unsigned int acc[MBK_TW] = {};
    word_accumulate(a + r * w, b + c0 * w, w, w, vec, jmax, acc);
    out[r * words + word] = threshold_word(acc, k, c0, jmax, 0, threshold, flip);
}

// ------------------------------------------------------------------ convolution

// The geometry of a binary convolution on channel-packed NHWC words: x (batch, h, w, wc),
// wt (o, kh, kw, wc), outputs at (batch, oh, ow) pixels; pad (wc words) is what a tap in the padding
// reads (0 for pad_value -1 and 0, the channel bits for +1); k = kh * kw * channels.
struct Conv {
    const u64* x;
    const u64* wt;
    const u64* pad;
    i64 pixels;
    int h, w, wc, o, kh, kw, sh, sw, ph, pw, oh, ow, k;
};

// Where output pixel p's window starts: its image's first word and its top-left input position.
__device__ __forceinline__ void pixel_origin(const Conv& g, i64 p, const u64** image, int* iy0, int* ix0) {
    const i64 ohw = (i64)g.oh * g.ow;
    const i64 b = p / ohw, pos = p - b * ohw;
    const int oy = (int)(pos / g.ow), ox = (int)(pos - (i64)oy * g.ow);
    *image = g.x + b * g.h * g.w * g.wc;
    *iy0 = oy * g.sh - g.ph;
    *ix0 = ox * g.sw - g.pw;
}

// The words of input pixel (iy, ix) of an image, or the pad words when it lies in the padding.
__device__ __forceinline__ const u64* tap_words(const Conv& g, const u64* image, int iy, int ix) {
    const bool inside = (unsigned int)iy < (unsigned int)g.h && (unsigned int)ix < (unsigned int)g.w;
    return inside ? image + ((i64)iy * g.w + ix) * g.wc : g.pad;
}

// Direct convolution, register-tiled like the GEMM: rows are output pixels, columns output channels;
// no im2col in memory (each tap's words are read in place, or the pad words).
template <int KIND>
__device__ __forceinline__ void conv_tile(const Conv& g, const int* __restrict__ corr, const float* __restrict__ scale,
                                          const float* __restrict__ bias, int vec, int* __restrict__ out_i,
                                          float* __restrict__ out_f) {
    i64 row0, col0;
    if (!tile_origin(g.pixels, g.o, &row0, &col0)) return;
    const u64* image[MBK_TM];
    int iy0[MBK_TM], ix0[MBK_TM];
#pragma unroll
    for (int i = 0; i < MBK_TM; ++i) pixel_origin(g, min64(row0 + i, g.pixels - 1), &image[i], &iy0[i], &ix0[i]);
    const i64 taps = (i64)g.kh * g.kw;
    const u64* wrow[MBK_TN];
#pragma unroll
    for (int j = 0; j < MBK_TN; ++j) wrow[j] = g.wt + min64(col0 + (i64)j * blockDim.x, g.o - 1) * taps * g.wc;
    unsigned int acc[MBK_TM][MBK_TN] = {};
    for (int ki = 0; ki < g.kh; ++ki) {
        for (int kj = 0; kj < g.kw; ++kj) {
            const u64* ap[MBK_TM];
            const u64* bp[MBK_TN];
#pragma unroll
            for (int i = 0; i < MBK_TM; ++i) ap[i] = tap_words(g, image[i], iy0[i] + ki, ix0[i] + kj);
            const i64 tap = ((i64)ki * g.kw + kj) * g.wc;
#pragma unroll
            for (int j = 0; j < MBK_TN; ++j) bp[j] = wrow[j] + tap;
            tile_accumulate(ap, bp, g.wc, vec, acc);
        }
    }
    const i64 ohw = (i64)g.oh * g.ow;
#pragma unroll
    for (int i = 0; i < MBK_TM; ++i) {
        const i64 r = row0 + i;
        if (r >= g.pixels) break;
        const i64 pos = r % ohw;
#pragma unroll
        for (int j = 0; j < MBK_TN; ++j) {
            const i64 c = col0 + (i64)j * blockDim.x;
            if (c >= g.o) continue;
            i64 dot = (i64)g.k - 2 * (i64)acc[i][j];
            if (corr) dot += __ldg(corr + pos * g.o + c);
            store<KIND>(r * g.o + c, (int)dot, c, scale, bias, out_i, out_f);
        }
    }
}

#define MBK_CONV_PARAMS                                                                                    \
    const u64 *__restrict__ x, const u64 *__restrict__ wt, const u64 *__restrict__ pad,                    \
        const int *__restrict__ corr, int has_corr, i64 batch, int h, int w, int wc, int o, int kh, int kw, \
        int sh, int sw, int ph, int pw, int oh, int ow, int k, int vec

__device__ __forceinline__ Conv make_conv(const u64* x, const u64* wt, const u64* pad, i64 batch, int h, int w,
                                          int wc, int o, int kh, int kw, int sh, int sw, int ph, int pw, int oh,
                                          int ow, int k) {
    Conv g;
    g.x = x, g.wt = wt, g.pad = pad, g.pixels = batch * oh * ow;
    g.h = h, g.w = w, g.wc = wc, g.o = o, g.kh = kh, g.kw = kw, g.sh = sh, g.sw = sw, g.ph = ph, g.pw = pw;
    g.oh = oh, g.ow = ow, g.k = k;
    return g;
}

#define MBK_CONV_ARGS x, wt, pad, batch, h, w, wc, o, kh, kw, sh, sw, ph, pw, oh, ow, k

// out (batch, oh, ow, o) int32; corr (oh, ow, o) is added when has_corr (pad_value 0).
extern "C" __global__ void mbk_binary_conv2d(MBK_CONV_PARAMS, int* __restrict__ out) {
    conv_tile<0>(make_conv(MBK_CONV_ARGS), has_corr ? corr : 0, 0, 0, vec, out, 0);
}

extern "C" __global__ void mbk_binary_conv2d_affine(MBK_CONV_PARAMS, const float* __restrict__ scale,
                                                    const float* __restrict__ bias, float* __restrict__ out) {
    conv_tile<1>(make_conv(MBK_CONV_ARGS), has_corr ? corr : 0, scale, bias, vec, 0, out);
}

// out (batch, oh, ow, ceil(o / 64)) words; thread t: pixel t % pixels, word t / pixels.
extern "C" __global__ void mbk_binary_conv2d_threshold(MBK_CONV_PARAMS, const int* __restrict__ threshold,
                                                       const unsigned char* __restrict__ flip,
                                                       u64* __restrict__ out) {
    const Conv g = make_conv(MBK_CONV_ARGS);
    const i64 words = ((i64)g.o + 63) / 64;
    const i64 t = global_thread();
    if (t >= g.pixels * words) return;
    const i64 p = t % g.pixels, word = t / g.pixels, c0 = word * MBK_TW;
    const int jmax = (int)min64(MBK_TW, g.o - c0) - 1;
    const u64* image;
    int iy0, ix0;
    pixel_origin(g, p, &image, &iy0, &ix0);
    const i64 stride = (i64)g.kh * g.kw * g.wc;  // words per output channel
    unsigned int acc[MBK_TW] = {};
    for (int ki = 0; ki < g.kh; ++ki)
        for (int kj = 0; kj < g.kw; ++kj)
            word_accumulate(tap_words(g, image, iy0 + ki, ix0 + kj), g.wt + c0 * stride + ((i64)ki * g.kw + kj) * g.wc,
                            stride, g.wc, vec, jmax, acc);
    const int* c = has_corr ? corr + (p % ((i64)g.oh * g.ow)) * g.o + c0 : 0;
    out[p * words + word] = threshold_word(acc, g.k, c0, jmax, c, threshold, flip);
}

// correction (oh, ow, o): the sum over the taps of output (y, x) that fall in the padding of
// s[o, tap] = 2 * popcount(wt[o, tap]) - channels. One thread per entry.
extern "C" __global__ void mbk_conv_pad_correction(const u64* __restrict__ wt, int o, int kh, int kw, int channels,
                                                   int wc, int h, int w, int sh, int sw, int ph, int pw, int oh,
                                                   int ow, int* __restrict__ out) {
    const i64 t = global_thread();
    if (t >= (i64)oh * ow * o) return;
    const int oc = (int)(t % o);
    const i64 pos = t / o;
    const int oy = (int)(pos / ow), ox = (int)(pos % ow);
    i64 sum = 0;
    for (int ki = 0; ki < kh; ++ki) {
        const int iy = oy * sh - ph + ki;
        const bool row_pad = iy < 0 || iy >= h;
        for (int kj = 0; kj < kw; ++kj) {
            const int ix = ox * sw - pw + kj;
            if (!row_pad && ix >= 0 && ix < w) continue;
            const u64* p = wt + (((i64)oc * kh + ki) * kw + kj) * wc;
            i64 ones = 0;
            for (int q = 0; q < wc; ++q) ones += __popcll(__ldg(p + q));
            sum += 2 * ones - channels;
        }
    }
    out[t] = (int)sum;
}
