/* minibnn native kernels (see minibnn_kernels.h for the contract).
 *
 * Layout of the GEMM: the N side (b rows; the weights in a convolution) is packed once per call into
 * panels of NR = 8 rows, interleaved word by word: panel[q][j] = b[n0 + j][q]. The micro-kernel
 * broadcasts one word of each of MR = 3 a rows and XORs it with the NR words of the panel at the
 * same position, so a SIMD register holds the running counts of several outputs and no
 * horizontal reduction is needed, whatever K is (K = 576 is only 9 words).
 * Popcount: AVX2 nibble lookup (vpshufb, Mula) into byte counters that are flushed with vpsadbw
 * every 31 words, on operands split into nibbles ahead of time (rows and panels twice as many words,
 * see split_rows); NEON vcntq_u8 likewise; the scalar path uses a 64-bit popcount.
 * Rows of a are read in place (GEMM) or gathered block by block from the channel-packed
 * activations (convolution: im2col over words, with the padding words of the pad value).
 * Work is split in tasks of (block of rows) x (range of panels); each output is written by exactly
 * one task with integer arithmetic, so results do not depend on the number of threads.
 */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif
#if defined(__unix__) || defined(__APPLE__)
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* pthread_atfork under -std=c11 */
#endif
#endif

/* An exported C program (minibnn.deploy.export_c) puts minibnn_config.h beside this file: it
 * defines MBK_STATIC_SCRATCH, so the program allocates nothing at run time. */
#if defined(__has_include)
#if __has_include("minibnn_config.h")
#include "minibnn_config.h"
#endif
#endif

#include "minibnn_kernels.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MBK_X86_AVX2 1
#include <immintrin.h>
#define MBK_TARGET_AVX2 __attribute__((target("avx2,popcnt")))
#endif

#if defined(__aarch64__)
#define MBK_NEON 1
#include <arm_neon.h>
#endif

#if !defined(__STDC_NO_ATOMICS__)
#include <stdatomic.h>
static atomic_int g_threads;   /* 0: not set yet, read from the environment on first use */
static atomic_int g_simd_mode; /* MBK_SIMD_AUTO or MBK_SIMD_SCALAR */
#define MBK_LOAD(v) atomic_load_explicit(&(v), memory_order_relaxed)
#define MBK_STORE(v, x) atomic_store_explicit(&(v), (x), memory_order_relaxed)
#else
static volatile int g_threads;
static volatile int g_simd_mode;
#define MBK_LOAD(v) (v)
#define MBK_STORE(v, x) ((v) = (x))
#endif

/* GNU OpenMP cannot start threads again in a child forked after it ran a parallel region (the
 * child would wait forever for the parent's pool). Once the kernels have asked for threads, a
 * fork handler marks the child, and the child runs the kernels on one thread. */
#if defined(_OPENMP) && !defined(__STDC_NO_ATOMICS__) && (defined(__unix__) || defined(__APPLE__))
#include <pthread.h>
#define MBK_ATFORK 1
static atomic_int g_forked;
static atomic_int g_atfork_registered;
static void on_fork_child(void) { MBK_STORE(g_forked, 1); }
static void register_atfork(void) {
    int expected = 0;
    if (MBK_LOAD(g_atfork_registered) == 0 &&
        atomic_compare_exchange_strong(&g_atfork_registered, &expected, 1))
        pthread_atfork(NULL, NULL, on_fork_child);
}
#endif

#define MR 3  /* a rows per micro tile (3 x 8 keeps the AVX2 accumulators in registers) */
#define NR 8  /* b rows per panel (micro tile columns) */
#define BYTE_FLUSH 31 /* words per byte-counter block: 31 * 8 <= 255 */
#define PACK_BLOCK 64 /* pixels per block in pack_channels */

enum { ISA_SCALAR = 1, ISA_AVX2 = 2, ISA_NEON = 3 };

/* ------------------------------------------------------------------ helpers */

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static inline int popcount64(uint64_t x) {
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_popcountll(x);
#else
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (int)((x * 0x0101010101010101ULL) >> 56);
#endif
}

/* Scratch memory: malloc and free, or, built with MBK_STATIC_SCRATCH (the C programs that
 * minibnn.deploy.export_c writes: one thread, no allocation at run time), pieces of the buffer given
 * to mbk_set_scratch, handed out in stack order. mbk_scratch_bytes says how much a call needs. */
#ifdef MBK_STATIC_SCRATCH
#ifdef _OPENMP
#error "MBK_STATIC_SCRATCH hands out scratch from one buffer: build it without OpenMP"
#endif
static unsigned char *g_arena;
static size_t g_arena_size, g_arena_used;

int mbk_set_scratch(void *buffer, int64_t bytes) {
    if (bytes < 0 || (buffer == NULL && bytes > 0)) return MBK_EINVAL;
    g_arena = (unsigned char *)buffer, g_arena_size = (size_t)bytes, g_arena_used = 0;
    return MBK_OK;
}

static void *scratch_alloc(size_t bytes) {
    if (bytes > g_arena_size - g_arena_used) return NULL;
    void *p = g_arena + g_arena_used;
    g_arena_used += bytes;
    return p;
}

static void scratch_free(void *p) { /* frees p and everything handed out after it */
    if (p != NULL && (size_t)((unsigned char *)p - g_arena) < g_arena_used)
        g_arena_used = (size_t)((unsigned char *)p - g_arena);
}
#else
int mbk_set_scratch(void *buffer, int64_t bytes) {
    (void)buffer, (void)bytes;
    return MBK_EINVAL; /* this build allocates with malloc */
}
#define scratch_alloc malloc
#define scratch_free free
#endif

/* 64-byte aligned scratch: returns the aligned pointer, *base is what scratch_free() takes. */
static void *aligned_scratch(size_t bytes, void **base) {
    unsigned char *p = (unsigned char *)scratch_alloc(bytes + 64);
    *base = p;
    if (p == NULL) return NULL;
    size_t shift = (size_t)(64 - ((uintptr_t)p & 63)) & 63;
    return p + shift;
}

#ifdef _OPENMP
static int env_threads(const char *name) {
    const char *s = getenv(name);
    if (s == NULL || *s == '\0') return 0;
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (end == s || v < 1) return 0;
    return v > 4096 ? 4096 : (int)v;
}
#endif

/* ------------------------------------------------------------------ configuration */

int mbk_version(void) { return 3; }

int mbk_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int mbk_set_num_threads(int n) {
    if (n < 1) return MBK_EINVAL;
    MBK_STORE(g_threads, n);
    return MBK_OK;
}

int mbk_get_num_threads(void) {
#ifdef _OPENMP
#ifdef MBK_ATFORK
    register_atfork();
    if (MBK_LOAD(g_forked)) return 1;
#endif
    int t = MBK_LOAD(g_threads);
    if (t < 1) {
        t = env_threads("MINIBNN_NUM_THREADS");
        if (t < 1) t = env_threads("OMP_NUM_THREADS");
        if (t < 1) t = omp_get_max_threads();
        if (t < 1) t = 1;
        MBK_STORE(g_threads, t);
    }
    return t;
#else
    return 1;
#endif
}

static int detect_isa(void) {
#if defined(MBK_X86_AVX2)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) return ISA_AVX2;
    return ISA_SCALAR;
#elif defined(MBK_NEON)
    return ISA_NEON;
#else
    return ISA_SCALAR;
#endif
}

static int active_isa(void) {
    if (MBK_LOAD(g_simd_mode) == MBK_SIMD_SCALAR) return ISA_SCALAR;
#if !defined(__STDC_NO_ATOMICS__)
    static atomic_int cached; /* 0 until detected; every thread detects the same value */
    int isa = MBK_LOAD(cached);
    if (isa == 0) {
        isa = detect_isa();
        MBK_STORE(cached, isa);
    }
    return isa;
#else
    return detect_isa();
#endif
}

int mbk_set_simd(int mode) {
    if (mode != MBK_SIMD_AUTO && mode != MBK_SIMD_SCALAR) return MBK_EINVAL;
    MBK_STORE(g_simd_mode, mode);
    return MBK_OK;
}

const char *mbk_simd_name(void) {
    switch (active_isa()) {
    case ISA_AVX2: return "avx2";
    case ISA_NEON: return "neon";
    default: return "scalar";
    }
}

/* ------------------------------------------------------------------ jobs and the epilogue */

typedef struct {
    const uint64_t *x;   /* (batch, h, w, wc) */
    const uint64_t *pad; /* kw * wc words: one kernel row of padding */
    int64_t batch, h, w, wc, kh, kw, sh, sw, ph, pw, oh, ow;
} conv_geom;

typedef struct {
    int64_t m, n, words, k;
    const uint64_t *a;    /* GEMM: (m, words); NULL in conv mode */
    const conv_geom *cv;  /* conv mode: rows are gathered (im2col over words) */
    const uint64_t *b;    /* (n, words), packed into bp by run_job */
    const uint64_t *bp;   /* (panels, words, NR) */
    int64_t ohw;          /* conv: output positions per image (correction row index) */
    const int32_t *corr;  /* conv pad_value 0: (ohw, n) */
    const float *scale, *bias;
    const int32_t *thr;   /* threshold output: bit = (dot >= thr[j]) != flip[j] */
    const uint8_t *flip;
    int32_t *out;         /* (m, n) int32, or NULL */
    float *out_f;         /* (m, n) float32, or NULL */
    uint8_t *out_bits;    /* (m, ceil(n / 64)) uint64 words seen as bytes, or NULL */
    int64_t out_words;    /* ceil(n / 64) */
} job_t;

/* Byte j (bits 8j .. 8j + 7) of a uint64 word lies at byte offset j on little-endian machines and
 * 7 - j on big-endian ones. Each micro tile spans NR = 8 columns, one byte of an output word, so
 * threads that own different tiles never write the same byte. */
static int byte_in_word(int j) {
    const uint16_t probe = 1;
    uint8_t first;
    memcpy(&first, &probe, 1);
    return first == 1 ? j : 7 - j;
}

static void store_bits(const job_t *jb, int64_t row, int64_t n0, int nr, const int32_t *v) {
    uint8_t byte = 0;
    for (int j = 0; j < nr; ++j)
        byte |= (uint8_t)(((v[j] >= jb->thr[n0 + j]) != (jb->flip[n0 + j] != 0)) << j);
    const int64_t word = n0 / 64;
    jb->out_bits[(row * jb->out_words + word) * 8 + byte_in_word((int)((n0 % 64) / 8))] = byte;
}

#if defined(__GNUC__) || defined(__clang__)
#define MBK_INLINE static inline __attribute__((always_inline))
#else
#define MBK_INLINE static inline
#endif

/* rows m0 .. m0 + mr of the tile at columns n0 .. n0 + nr; crow[i]: correction row or NULL */
MBK_INLINE void store_tile(const job_t *jb, int64_t m0, int mr, int64_t n0, int nr,
                           const int32_t *const *crow, const int32_t *dot) {
    if (jb->out_f == NULL && jb->out_bits == NULL && crow == NULL && nr == NR) { /* plain copies */
        for (int i = 0; i < mr; ++i) memcpy(jb->out + (m0 + i) * jb->n + n0, dot + i * NR, sizeof(int32_t) * NR);
        return;
    }
    for (int i = 0; i < mr; ++i) {
        const int64_t row = m0 + i;
        const int32_t *d = dot + i * NR;
        int32_t v[NR];
        if (crow != NULL) {
            const int32_t *cr = crow[i] + n0;
            for (int j = 0; j < nr; ++j) v[j] = d[j] + cr[j];
        } else {
            for (int j = 0; j < nr; ++j) v[j] = d[j];
        }
        if (jb->out_bits != NULL) {
            store_bits(jb, row, n0, nr, v);
        } else if (jb->out_f != NULL) {
            float *o = jb->out_f + row * jb->n + n0;
            const float *s = jb->scale + n0, *b = jb->bias + n0;
            for (int j = 0; j < nr; ++j) {
                const float y = (float)v[j] * s[j]; /* two float32 roundings, as NumPy */
                o[j] = y + b[j];
            }
        } else {
            int32_t *o = jb->out + row * jb->n + n0;
            for (int j = 0; j < nr; ++j) o[j] = v[j];
        }
    }
}

/* ------------------------------------------------------------------ micro-kernels
 * kern(a, bp, words, k, dot): a[0..MR) are row pointers (words each), bp one panel
 * (words x NR, interleaved); dot[i * NR + j] = k - 2 * popcount(a[i] XOR b[j]). */

MBK_INLINE void kern_scalar(const uint64_t *const *a, const uint64_t *bp, int64_t words, int64_t k,
                            int32_t *dot) {
    int64_t cnt[MR * NR] = {0};
    for (int64_t q = 0; q < words; ++q) {
        const uint64_t *bq = bp + q * NR;
        for (int i = 0; i < MR; ++i) {
            const uint64_t ai = a[i][q];
            for (int j = 0; j < NR; ++j) cnt[i * NR + j] += popcount64(ai ^ bq[j]);
        }
    }
    for (int t = 0; t < MR * NR; ++t) dot[t] = (int32_t)(k - 2 * cnt[t]);
}

#if defined(MBK_X86_AVX2)
#define MBK_INLINE_AVX2 static inline __attribute__((always_inline, target("avx2,popcnt")))
#define NIBBLES 0x0F0F0F0F0F0F0F0FULL

/* The AVX2 path takes its operands split into nibbles ahead of time: each word w of an a row
 * becomes the two words w & NIBBLES, (w >> 4) & NIBBLES (split_rows), and a panel holds both halves
 * of each b word (pack_panel_avx2). Then popcount(a ^ b) is the byte sum of
 * LUT[a_lo ^ b_lo] + LUT[a_hi ^ b_hi]: two XORs, two vpshufb and two byte adds per 256 bit-MACs,
 * with no masking or shifting in the loop. In a split panel, word q holds the 8 low halves, then
 * the 8 high halves, row j in slot avx2_slot(j): the even rows in the first vector of 4, the odd
 * rows in the second, so that the two vpsadbw results interleave into rows 0..7 as int32. */
static inline int avx2_slot(int j) { return (j >> 1) + (j & 1) * (NR / 2); }

static void split_rows(const uint64_t *src, int64_t count, uint64_t *dst) {
    for (int64_t q = 0; q < count; ++q) {
        dst[2 * q] = src[q] & NIBBLES;
        dst[2 * q + 1] = (src[q] >> 4) & NIBBLES;
    }
}

/* panel p of b (n, words), split: (words, 2, NR) words, rows past n as zeros. Full panels go 4
 * words at a time: a 4 x 4 transpose of the even rows and one of the odd rows. */
MBK_TARGET_AVX2 static void pack_panel_avx2(const uint64_t *b, int64_t n, int64_t words, int64_t p,
                                            uint64_t *bp) {
    uint64_t *dst = bp + p * words * 2 * NR;
    const int nr = (int)min64(NR, n - p * NR);
    const uint64_t *src = b + p * NR * words;
    const __m256i nib = _mm256_set1_epi64x((long long)NIBBLES);
    int64_t q = 0;
    if (nr == NR) {
        for (; q + 4 <= words; q += 4) {
            for (int odd = 0; odd < 2; ++odd) { /* rows odd, odd + 2, odd + 4, odd + 6 */
                const uint64_t *s = src + odd * words + q;
                const __m256i r0 = _mm256_loadu_si256((const __m256i *)s);
                const __m256i r1 = _mm256_loadu_si256((const __m256i *)(s + 2 * words));
                const __m256i r2 = _mm256_loadu_si256((const __m256i *)(s + 4 * words));
                const __m256i r3 = _mm256_loadu_si256((const __m256i *)(s + 6 * words));
                const __m256i t0 = _mm256_unpacklo_epi64(r0, r1), t1 = _mm256_unpackhi_epi64(r0, r1);
                const __m256i t2 = _mm256_unpacklo_epi64(r2, r3), t3 = _mm256_unpackhi_epi64(r2, r3);
                __m256i w[4];
                w[0] = _mm256_permute2x128_si256(t0, t2, 0x20);
                w[1] = _mm256_permute2x128_si256(t1, t3, 0x20);
                w[2] = _mm256_permute2x128_si256(t0, t2, 0x31);
                w[3] = _mm256_permute2x128_si256(t1, t3, 0x31);
                for (int i = 0; i < 4; ++i) {
                    uint64_t *d = dst + (q + i) * 2 * NR + odd * (NR / 2);
                    _mm256_store_si256((__m256i *)d, _mm256_and_si256(w[i], nib));
                    _mm256_store_si256((__m256i *)(d + NR), _mm256_and_si256(_mm256_srli_epi64(w[i], 4), nib));
                }
            }
        }
    }
    for (; q < words; ++q) {
        for (int j = 0; j < NR; ++j) {
            const uint64_t v = j < nr ? src[j * words + q] : 0;
            dst[q * 2 * NR + avx2_slot(j)] = v & NIBBLES;
            dst[q * 2 * NR + NR + avx2_slot(j)] = (v >> 4) & NIBBLES;
        }
    }
}

MBK_INLINE_AVX2 __m256i avx2_bcast(const uint64_t *p) {
    return _mm256_broadcastq_epi64(_mm_loadl_epi64((const __m128i *)p));
}

/* byte counters of slots 0..3 and 4..7 -> the 8 row sums as int32 (row order, see avx2_slot) */
MBK_INLINE_AVX2 __m256i avx2_sums(__m256i c0, __m256i c1) {
    const __m256i zero = _mm256_setzero_si256();
    return _mm256_blend_epi32(_mm256_sad_epu8(c0, zero), _mm256_slli_epi64(_mm256_sad_epu8(c1, zero), 32), 0xAA);
}

#define AVX2_STEP(c0, c1, row)                                                                     \
    do {                                                                                           \
        const __m256i xl_ = avx2_bcast((row) + 2 * q), xh_ = avx2_bcast((row) + 2 * q + 1);        \
        c0 = _mm256_add_epi8(c0, _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_xor_si256(xl_, b0l)), \
                                                 _mm256_shuffle_epi8(lut, _mm256_xor_si256(xh_, b0h)))); \
        c1 = _mm256_add_epi8(c1, _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_xor_si256(xl_, b1l)), \
                                                 _mm256_shuffle_epi8(lut, _mm256_xor_si256(xh_, b1h)))); \
    } while (0)

/* a[0..MR): split rows (2 * words words each), bp: one split panel; pop[i]: the popcounts of
 * a[i] XOR the panel's rows 0..7 (int32; popcounts fit, K <= INT32_MAX) */
MBK_INLINE_AVX2 void kern_avx2(const uint64_t *const *a, const uint64_t *bp, int64_t words, __m256i *pop) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i zero = _mm256_setzero_si256();
    const uint64_t *a0 = a[0], *a1 = a[1], *a2 = a[2];
    __m256i t0 = zero, t1 = zero, t2 = zero;
    for (int64_t q0 = 0; q0 < words; q0 += BYTE_FLUSH) {
        const int64_t q1 = min64(words, q0 + BYTE_FLUSH);
        __m256i c00 = zero, c01 = zero, c10 = zero, c11 = zero, c20 = zero, c21 = zero;
        for (int64_t q = q0; q < q1; ++q) {
            const uint64_t *bq = bp + q * 2 * NR;
            const __m256i b0l = _mm256_load_si256((const __m256i *)bq);
            const __m256i b1l = _mm256_load_si256((const __m256i *)(bq + 4));
            const __m256i b0h = _mm256_load_si256((const __m256i *)(bq + 8));
            const __m256i b1h = _mm256_load_si256((const __m256i *)(bq + 12));
            AVX2_STEP(c00, c01, a0);
            AVX2_STEP(c10, c11, a1);
            AVX2_STEP(c20, c21, a2);
        }
        t0 = _mm256_add_epi32(t0, avx2_sums(c00, c01));
        t1 = _mm256_add_epi32(t1, avx2_sums(c10, c11));
        t2 = _mm256_add_epi32(t2, avx2_sums(c20, c21));
    }
    pop[0] = t0, pop[1] = t1, pop[2] = t2;
}
#undef AVX2_STEP

/* the AVX2 block: as MBK_DEFINE_BLOCK, on split rows and panels, full tiles stored directly */
MBK_TARGET_AVX2 static void block_avx2(const job_t *jb, const uint64_t *base, int64_t m0, int64_t rows,
                                       int64_t p0, int64_t p1) {
    const int64_t words = jb->words, n = jb->n;
    const int64_t group = 1 + 16384 / (words * 2 * NR * (int64_t)sizeof(uint64_t));
    const int direct = jb->out != NULL && jb->corr == NULL; /* int32 output, no correction */
    const __m256i kk = _mm256_set1_epi32((int32_t)jb->k);
    int32_t dot[MR * NR];
    for (int64_t g0 = p0; g0 < p1; g0 += group) {
        const int64_t g1 = min64(p1, g0 + group);
        for (int64_t i0 = 0; i0 < rows; i0 += MR) {
            const int mr = (int)min64(MR, rows - i0);
            const uint64_t *ptr[MR];
            const int32_t *crow[MR];
            for (int i = 0; i < MR; ++i) ptr[i] = base + (i0 + (i < mr ? i : mr - 1)) * 2 * words;
            if (jb->corr != NULL) {
                int64_t pos = (m0 + i0) % jb->ohw;
                for (int i = 0; i < MR; ++i, ++pos) {
                    if (pos == jb->ohw) pos = 0;
                    crow[i] = jb->corr + pos * n;
                }
            }
            for (int64_t p = g0; p < g1; ++p) {
                const int64_t n0 = p * NR;
                __m256i pop[MR];
                kern_avx2(ptr, jb->bp + p * words * 2 * NR, words, pop);
                if (direct && n0 + NR <= n) {
                    int32_t *o = jb->out + (m0 + i0) * n + n0;
                    for (int i = 0; i < mr; ++i)
                        _mm256_storeu_si256((__m256i *)(o + i * n), _mm256_sub_epi32(kk, _mm256_add_epi32(pop[i], pop[i])));
                    continue;
                }
                for (int i = 0; i < MR; ++i)
                    _mm256_storeu_si256((__m256i *)(dot + i * NR), _mm256_sub_epi32(kk, _mm256_add_epi32(pop[i], pop[i])));
                store_tile(jb, m0 + i0, mr, n0, (int)min64(NR, n - n0), jb->corr != NULL ? crow : NULL, dot);
            }
        }
    }
}
#endif /* MBK_X86_AVX2 */

#if defined(MBK_NEON)
MBK_INLINE void kern_neon(const uint64_t *const *a, const uint64_t *bp, int64_t words, int64_t k,
                          int32_t *dot) {
    uint64x2_t tot[MR][NR / 2];
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR / 2; ++j) tot[i][j] = vdupq_n_u64(0);
    for (int64_t q0 = 0; q0 < words; q0 += BYTE_FLUSH) {
        const int64_t q1 = min64(words, q0 + BYTE_FLUSH);
        uint8x16_t c[MR][NR / 2];
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < NR / 2; ++j) c[i][j] = vdupq_n_u8(0);
        for (int64_t q = q0; q < q1; ++q) {
            uint64x2_t b[NR / 2];
            for (int j = 0; j < NR / 2; ++j) b[j] = vld1q_u64(bp + q * NR + 2 * j);
            for (int i = 0; i < MR; ++i) {
                const uint64x2_t x = vdupq_n_u64(a[i][q]);
                for (int j = 0; j < NR / 2; ++j)
                    c[i][j] = vaddq_u8(c[i][j], vcntq_u8(vreinterpretq_u8_u64(veorq_u64(x, b[j]))));
            }
        }
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < NR / 2; ++j)
                tot[i][j] = vpadalq_u32(tot[i][j], vpaddlq_u16(vpaddlq_u8(c[i][j])));
    }
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR / 2; ++j) {
            dot[i * NR + 2 * j] = (int32_t)(k - 2 * (int64_t)vgetq_lane_u64(tot[i][j], 0));
            dot[i * NR + 2 * j + 1] = (int32_t)(k - 2 * (int64_t)vgetq_lane_u64(tot[i][j], 1));
        }
}
#endif /* MBK_NEON */

/* ------------------------------------------------------------------ blocks of tiles
 * block(jb, base, m0, rows, p0, p1): rows [m0, m0 + rows) (their words at base, rows apart by
 * `words`) against panels [p0, p1). Panels go in groups that stay in L1 while the rows pass,
 * so each output row is written in runs of group * NR contiguous values. */

typedef void (*block_fn)(const job_t *jb, const uint64_t *base, int64_t m0, int64_t rows, int64_t p0,
                         int64_t p1);

#define MBK_DEFINE_BLOCK(NAME, ATTR, KERN)                                                        \
    ATTR void NAME(const job_t *jb, const uint64_t *base, int64_t m0, int64_t rows, int64_t p0,      \
                   int64_t p1) {                                                                 \
        const int64_t words = jb->words, n = jb->n;                                              \
        const int64_t group = 1 + 16384 / (words * NR * (int64_t)sizeof(uint64_t));              \
        int32_t dot[MR * NR];                                                                    \
        for (int64_t g0 = p0; g0 < p1; g0 += group) {                                            \
            const int64_t g1 = min64(p1, g0 + group);                                            \
            for (int64_t i0 = 0; i0 < rows; i0 += MR) {                                          \
                const int mr = (int)min64(MR, rows - i0);                                        \
                const uint64_t *ptr[MR];                                                         \
                const int32_t *crow[MR];                                                         \
                for (int i = 0; i < MR; ++i) ptr[i] = base + (i0 + (i < mr ? i : mr - 1)) * words; \
                if (jb->corr != NULL) {                                                          \
                    int64_t pos = (m0 + i0) % jb->ohw;                                           \
                    for (int i = 0; i < MR; ++i, ++pos) {                                        \
                        if (pos == jb->ohw) pos = 0;                                             \
                        crow[i] = jb->corr + pos * n;                                            \
                    }                                                                            \
                }                                                                                \
                for (int64_t p = g0; p < g1; ++p) {                                              \
                    const int64_t n0 = p * NR;                                                   \
                    KERN(ptr, jb->bp + p * words * NR, words, jb->k, dot);                       \
                    store_tile(jb, m0 + i0, mr, n0, (int)min64(NR, n - n0),                      \
                               jb->corr != NULL ? crow : NULL, dot);                             \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
    }

MBK_DEFINE_BLOCK(block_scalar, static, kern_scalar)
#if defined(MBK_NEON)
MBK_DEFINE_BLOCK(block_neon, static, kern_neon)
#endif

static block_fn pick_block(int isa) {
    switch (isa) {
#if defined(MBK_X86_AVX2)
    case ISA_AVX2: return block_avx2;
#endif
#if defined(MBK_NEON)
    case ISA_NEON: return block_neon;
#endif
    default: return block_scalar;
    }
}

/* ------------------------------------------------------------------ GEMM driver */

/* panel p of b (n, words): NR rows interleaved word by word, rows past n as zeros */
static void pack_panel(const uint64_t *b, int64_t n, int64_t words, int64_t p, uint64_t *bp) {
    uint64_t *dst = bp + p * words * NR;
    for (int j = 0; j < NR; ++j) {
        const int64_t row = p * NR + j;
        if (row < n) {
            const uint64_t *src = b + row * words;
            for (int64_t q = 0; q < words; ++q) dst[q * NR + j] = src[q];
        } else {
            for (int64_t q = 0; q < words; ++q) dst[q * NR + j] = 0;
        }
    }
}

static inline void copy_words(uint64_t *dst, const uint64_t *src, int64_t n) {
    for (int64_t q = 0; q < n; ++q) dst[q] = src[q];
}

/* rows [m0, m0 + rows) of the im2col matrix over words, into buf (rows, kh * kw * wc) */
static void im2col_words(const conv_geom *g, int64_t m0, int64_t rows, uint64_t *buf) {
    const int64_t wc = g->wc, run = g->kw * wc, words = g->kh * run, ohw = g->oh * g->ow;
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t row = m0 + r, img = row / ohw, pos = row % ohw;
        const int64_t oy = pos / g->ow, ox = pos % g->ow;
        const int64_t ix0 = ox * g->sw - g->pw;
        uint64_t *dst = buf + r * words;
        for (int64_t i = 0; i < g->kh; ++i, dst += run) {
            const int64_t iy = oy * g->sh - g->ph + i;
            if (iy < 0 || iy >= g->h) {
                copy_words(dst, g->pad, run);
                continue;
            }
            const uint64_t *src_row = g->x + (img * g->h + iy) * g->w * wc;
            if (ix0 >= 0 && ix0 + g->kw <= g->w) { /* whole kernel row inside: one run */
                copy_words(dst, src_row + ix0 * wc, run);
                continue;
            }
            for (int64_t j = 0; j < g->kw; ++j) {
                const int64_t ix = ix0 + j;
                copy_words(dst + j * wc, (ix >= 0 && ix < g->w) ? src_row + ix * wc : g->pad, wc);
            }
        }
    }
}

static void run_task(const job_t *jb, block_fn block, int64_t mb, int64_t nsplit, int64_t t, uint64_t *buf,
                     uint64_t *sbuf) {
    const int64_t panels = (jb->n + NR - 1) / NR;
    const int64_t m0 = (t / nsplit) * mb, s = t % nsplit;
    const int64_t rows = min64(mb, jb->m - m0);
    const int64_t p0 = panels * s / nsplit, p1 = panels * (s + 1) / nsplit;
    const uint64_t *src = buf;
    if (jb->cv != NULL)
        im2col_words(jb->cv, m0, rows, buf);
    else
        src = jb->a + m0 * jb->words;
#if defined(MBK_X86_AVX2)
    if (sbuf != NULL) { /* the AVX2 block takes split rows */
        split_rows(src, rows * jb->words, sbuf);
        src = sbuf;
    }
#else
    (void)sbuf;
#endif
    block(jb, src, m0, rows, p0, p1);
}

/* rows per block: the block (mb x words words) stays in L1/L2 while the panels stream by */
static int64_t block_rows(int64_t m, int64_t words) {
    int64_t mb = 24576 / (words * 8);
    mb = mb < 16 ? 16 : (mb > 512 ? 512 : mb);
    mb -= mb % MR;
    return mb >= m ? m : mb;
}

int64_t mbk_scratch_bytes(int64_t m, int64_t n, int64_t words, int64_t conv_kw, int64_t conv_wc,
                          int64_t conv_o, int64_t conv_taps) {
    if (m < 0 || n < 0 || words < 0 || conv_kw < 0 || conv_wc < 0 || conv_o < 0 || conv_taps < 0) return -1;
    const int conv = conv_kw > 0;
    int64_t bytes = conv ? conv_kw * conv_wc * 8 : 0; /* the padding words of mbk_binary_conv2d */
    if (m > 0 && n > 0 && words > 0) {               /* run_job, with split operands (the larger case) */
        const int64_t panels = (n + NR - 1) / NR, mb = block_rows(m, words);
        bytes += panels * words * NR * 2 * 8 + 64 + mb * words * 2 * 8 + 64 + (conv ? mb * words * 8 + 64 : 0);
    }
    const int64_t correction = conv_o * conv_taps * 8; /* mbk_conv_pad_correction, called on its own */
    return bytes > correction ? bytes : correction;
}

static int run_job(job_t *jb) {
    const int64_t m = jb->m, n = jb->n, words = jb->words;
    if (m == 0 || n == 0) return MBK_OK;
    if (jb->out_bits != NULL) memset(jb->out_bits, 0, (size_t)(m * jb->out_words) * sizeof(uint64_t));
    if (words == 0) { /* k == 0: every dot is 0 */
        int32_t dot[MR * NR] = {0};
        for (int64_t m0 = 0; m0 < m; m0 += MR)
            for (int64_t n0 = 0; n0 < n; n0 += NR) {
                const int32_t *crow[MR] = {NULL};
                if (jb->corr != NULL)
                    for (int i = 0; i < MR; ++i) crow[i] = jb->corr + ((m0 + i) % jb->ohw) * n;
                store_tile(jb, m0, (int)min64(MR, m - m0), n0, (int)min64(NR, n - n0),
                           jb->corr != NULL ? crow : NULL, dot);
            }
        return MBK_OK;
    }
    const int64_t panels = (n + NR - 1) / NR;
    const int isa = active_isa();
    const int split = isa == ISA_AVX2; /* split rows and panels (see split_rows) */
    void (*pack)(const uint64_t *, int64_t, int64_t, int64_t, uint64_t *) = pack_panel;
#if defined(MBK_X86_AVX2)
    if (split) pack = pack_panel_avx2;
#endif
    void *bp_base = NULL;
    uint64_t *bp = (uint64_t *)aligned_scratch((size_t)(panels * words * NR * (split ? 2 : 1)) * sizeof(uint64_t),
                                               &bp_base);
    if (bp == NULL) return MBK_ENOMEM;
    jb->bp = bp;
    const block_fn block = pick_block(isa);

    const int nthreads = mbk_get_num_threads();
    const int64_t mb = block_rows(m, words);
    const int64_t nmb = (m + mb - 1) / mb;
    int64_t nsplit = 1;
    const int64_t target = nthreads > 1 ? 4 * (int64_t)nthreads : 1;
    while (nmb * nsplit < target && nsplit * 2 <= panels) nsplit *= 2;
    const int64_t ntasks = nmb * nsplit;
    /* Waking a sleeping worker costs ~0.1-0.3 ms on the 2-vCPU development VM (measured: a batch-1
     * ResNet-18 layer took 0.35 ms on 1 thread and 0.6 ms on 2), so only jobs of about 1 ms or more
     * (2^22 word pairs = 268 M bit-MACs) are split. */
    const int parallel = nthreads > 1 && ntasks > 1 && m * n * words >= ((int64_t)1 << 22);
    int err = 0;
    (void)parallel;

#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) if (parallel)
#endif
    {
        void *buf_base = NULL, *sbuf_base = NULL;
        uint64_t *buf = NULL, *sbuf = NULL;
        int my_err = 0;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t p = 0; p < panels; ++p) pack(jb->b, n, words, p, bp);
        /* (the implicit barrier: every panel is packed before any task reads one) */
        if (jb->cv != NULL) {
            buf = (uint64_t *)aligned_scratch((size_t)(mb * words) * sizeof(uint64_t), &buf_base);
            if (buf == NULL) my_err = 1;
        }
        if (split) {
            sbuf = (uint64_t *)aligned_scratch((size_t)(mb * words * 2) * sizeof(uint64_t), &sbuf_base);
            if (sbuf == NULL) my_err = 1;
        }
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t t = 0; t < ntasks; ++t) {
            if (!my_err) run_task(jb, block, mb, nsplit, t, buf, sbuf);
        }
        if (my_err) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            err = 1;
        }
        scratch_free(sbuf_base);
        scratch_free(buf_base);
    }
    scratch_free(bp_base);
    return err ? MBK_ENOMEM : MBK_OK;
}

static int gemm_args_ok(const uint64_t *a, const uint64_t *b, int64_t m, int64_t n, int64_t words,
                        int64_t k) {
    if (m < 0 || n < 0 || k < 0 || k > INT32_MAX || words != (k + 63) / 64) return 0;
    if (m > 0 && n > 0 && words > 0 && (a == NULL || b == NULL)) return 0;
    return 1;
}

/* a GEMM job with no output chosen yet (the callers set one) */
static job_t gemm_job(const uint64_t *a, const uint64_t *b, int64_t m, int64_t n, int64_t words, int64_t k) {
    job_t jb;
    memset(&jb, 0, sizeof jb);
    jb.m = m, jb.n = n, jb.words = words, jb.k = k, jb.a = a, jb.b = b;
    return jb;
}

int mbk_xnor_gemm(const uint64_t *a, const uint64_t *b, int64_t m, int64_t n, int64_t words,
                  int64_t k, int32_t *out) {
    if (!gemm_args_ok(a, b, m, n, words, k) || (m > 0 && n > 0 && out == NULL)) return MBK_EINVAL;
    job_t jb = gemm_job(a, b, m, n, words, k);
    jb.out = out;
    return run_job(&jb);
}

int mbk_xnor_gemm_affine(const uint64_t *a, const uint64_t *b, int64_t m, int64_t n, int64_t words,
                         int64_t k, const float *scale, const float *bias, float *out) {
    if (!gemm_args_ok(a, b, m, n, words, k)) return MBK_EINVAL;
    if (m > 0 && n > 0 && (out == NULL || scale == NULL || bias == NULL)) return MBK_EINVAL;
    job_t jb = gemm_job(a, b, m, n, words, k);
    jb.scale = scale, jb.bias = bias, jb.out_f = out;
    return run_job(&jb);
}

int mbk_xnor_gemm_threshold(const uint64_t *a, const uint64_t *b, int64_t m, int64_t n, int64_t words,
                            int64_t k, const int32_t *thr, const uint8_t *flip, uint64_t *out) {
    if (!gemm_args_ok(a, b, m, n, words, k)) return MBK_EINVAL;
    if (m > 0 && n > 0 && (out == NULL || thr == NULL || flip == NULL)) return MBK_EINVAL;
    job_t jb = gemm_job(a, b, m, n, words, k);
    jb.thr = thr, jb.flip = flip, jb.out_bits = (uint8_t *)out, jb.out_words = (n + 63) / 64;
    return run_job(&jb);
}

/* ------------------------------------------------------------------ convolution */

static int64_t conv_out_size(int64_t size, int64_t kernel, int64_t stride, int64_t pad) {
    const int64_t span = size + 2 * pad - kernel;
    return span < 0 ? 0 : span / stride + 1;
}

static int conv_args_ok(int64_t batch, int64_t h, int64_t w, int64_t c, int64_t o, int64_t kh,
                        int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
    if (batch < 0 || h < 1 || w < 1 || c < 1 || o < 0 || kh < 1 || kw < 1) return 0;
    if (sh < 1 || sw < 1 || ph < 0 || pw < 0) return 0;
    if (kh * kw > INT32_MAX / c) return 0; /* the true K must fit the int32 output */
    return conv_out_size(h, kh, sh, ph) >= 1 && conv_out_size(w, kw, sw, pw) >= 1;
}

int mbk_binary_conv2d(const uint64_t *x, const uint64_t *wt, int64_t batch, int64_t h, int64_t w,
                      int64_t c, int64_t o, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                      int64_t ph, int64_t pw, int pad_value, const int32_t *correction,
                      const float *scale, const float *bias, const int32_t *thr, const uint8_t *flip,
                      int32_t *out, float *out_f, uint64_t *out_bits) {
    if (!conv_args_ok(batch, h, w, c, o, kh, kw, sh, sw, ph, pw)) return MBK_EINVAL;
    if (pad_value != 0 && pad_value != 1 && pad_value != -1) return MBK_EINVAL;
    if (pad_value == 0 && correction == NULL) return MBK_EINVAL;
    if ((out != NULL) + (out_f != NULL) + (out_bits != NULL) != 1) return MBK_EINVAL;
    if (out_f != NULL && (scale == NULL || bias == NULL)) return MBK_EINVAL;
    if (out_bits != NULL && (thr == NULL || flip == NULL)) return MBK_EINVAL;
    if (batch == 0 || o == 0) return MBK_OK;
    if (x == NULL || wt == NULL) return MBK_EINVAL;

    conv_geom g;
    g.x = x, g.batch = batch, g.h = h, g.w = w, g.wc = (c + 63) / 64;
    g.kh = kh, g.kw = kw, g.sh = sh, g.sw = sw, g.ph = ph, g.pw = pw;
    g.oh = conv_out_size(h, kh, sh, ph), g.ow = conv_out_size(w, kw, sw, pw);
    uint64_t *pad = (uint64_t *)scratch_alloc((size_t)(kw * g.wc) * sizeof(uint64_t));
    if (pad == NULL) return MBK_ENOMEM;
    for (int64_t q = 0; q < g.wc; ++q) {
        uint64_t word = 0;
        if (pad_value == 1) { /* +1: ones on the valid channel bits only, the tail stays 0 */
            const int64_t valid = c - 64 * q;
            word = valid >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << valid) - 1);
        }
        for (int64_t j = 0; j < kw; ++j) pad[j * g.wc + q] = word;
    }
    g.pad = pad;

    job_t jb;
    memset(&jb, 0, sizeof jb);
    jb.m = batch * g.oh * g.ow, jb.n = o, jb.words = kh * kw * g.wc, jb.k = kh * kw * c;
    jb.cv = &g, jb.b = wt, jb.ohw = g.oh * g.ow;
    jb.corr = pad_value == 0 ? correction : NULL;
    jb.scale = scale, jb.bias = bias, jb.out = out, jb.out_f = out_f;
    jb.thr = thr, jb.flip = flip, jb.out_bits = (uint8_t *)out_bits, jb.out_words = (o + 63) / 64;
    const int rc = run_job(&jb);
    scratch_free(pad);
    return rc;
}

int mbk_conv_pad_correction(const uint64_t *wt, int64_t o, int64_t kh, int64_t kw, int64_t c,
                            int64_t h, int64_t w, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                            int32_t *correction) {
    if (!conv_args_ok(1, h, w, c, o, kh, kw, sh, sw, ph, pw)) return MBK_EINVAL;
    if (o == 0) return MBK_OK;
    if (wt == NULL || correction == NULL) return MBK_EINVAL;
    const int64_t wc = (c + 63) / 64, taps = kh * kw;
    const int64_t oh = conv_out_size(h, kh, sh, ph), ow = conv_out_size(w, kw, sw, pw);
    int64_t *s = (int64_t *)scratch_alloc((size_t)(o * taps) * sizeof(int64_t)); /* s[tap][o] */
    if (s == NULL) return MBK_ENOMEM;
    for (int64_t oc = 0; oc < o; ++oc)
        for (int64_t t = 0; t < taps; ++t) {
            const uint64_t *src = wt + (oc * taps + t) * wc;
            int64_t ones = 0;
            for (int64_t q = 0; q < wc; ++q) ones += popcount64(src[q]);
            s[t * o + oc] = 2 * ones - c;
        }
    for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox) {
            int32_t *dst = correction + (oy * ow + ox) * o;
            for (int64_t oc = 0; oc < o; ++oc) dst[oc] = 0;
            for (int64_t i = 0; i < kh; ++i) {
                const int64_t iy = oy * sh - ph + i;
                for (int64_t j = 0; j < kw; ++j) {
                    const int64_t ix = ox * sw - pw + j;
                    if (iy >= 0 && iy < h && ix >= 0 && ix < w) continue;
                    const int64_t *st = s + (i * kw + j) * o;
                    for (int64_t oc = 0; oc < o; ++oc) dst[oc] += (int32_t)st[oc];
                }
            }
        }
    scratch_free(s);
    return MBK_OK;
}

/* ------------------------------------------------------------------ packing */

static void pack_row_scalar(const float *x, int64_t k, uint64_t *out) {
    const int64_t full = k / 64;
    for (int64_t q = 0; q < full; ++q) {
        const float *src = x + q * 64;
        uint64_t v = 0;
        for (int b = 0; b < 64; ++b) v |= (uint64_t)(src[b] >= 0.0f) << b;
        out[q] = v;
    }
    if (full * 64 < k) {
        const float *src = x + full * 64;
        const int rem = (int)(k - full * 64);
        uint64_t v = 0;
        for (int b = 0; b < rem; ++b) v |= (uint64_t)(src[b] >= 0.0f) << b;
        out[full] = v;
    }
}

#if defined(MBK_X86_AVX2)
MBK_TARGET_AVX2 static void pack_row_avx2(const float *x, int64_t k, uint64_t *out) {
    const __m256 zero = _mm256_setzero_ps();
    const int64_t full = k / 64;
    for (int64_t q = 0; q < full; ++q) {
        const float *src = x + q * 64;
        uint64_t v = 0;
        for (int g = 0; g < 8; ++g) {
            const __m256 f = _mm256_loadu_ps(src + 8 * g);
            const unsigned bits = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(f, zero, _CMP_GE_OQ));
            v |= (uint64_t)bits << (8 * g);
        }
        out[q] = v;
    }
    if (full * 64 < k) {
        const float *src = x + full * 64;
        const int rem = (int)(k - full * 64);
        uint64_t v = 0;
        int b = 0;
        for (; b + 8 <= rem; b += 8) {
            const __m256 f = _mm256_loadu_ps(src + b);
            const unsigned bits = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(f, zero, _CMP_GE_OQ));
            v |= (uint64_t)bits << b;
        }
        for (; b < rem; ++b) v |= (uint64_t)(src[b] >= 0.0f) << b;
        out[full] = v;
    }
}
#endif

int mbk_pack_rows_f32(const float *x, int64_t rows, int64_t k, uint64_t *out) {
    if (rows < 0 || k < 0) return MBK_EINVAL;
    if (rows == 0 || k == 0) return MBK_OK;
    if (x == NULL || out == NULL) return MBK_EINVAL;
    const int64_t words = (k + 63) / 64;
    void (*pack)(const float *, int64_t, uint64_t *) = pack_row_scalar;
#if defined(MBK_X86_AVX2)
    if (active_isa() == ISA_AVX2) pack = pack_row_avx2;
#endif
    const int nthreads = mbk_get_num_threads();
    const int parallel = nthreads > 1 && rows > 1 && rows * k >= (1 << 21); /* ~1 ms, see run_job */
    (void)parallel;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nthreads) if (parallel) schedule(static)
#endif
    for (int64_t r = 0; r < rows; ++r) pack(x + r * k, k, out + r * words);
    return MBK_OK;
}

/* one block of pixels [p0, p0 + pn) of one image: x (c, inner) -> out (inner, wc) */
static void pack_channels_block_scalar(const float *x, int64_t c, int64_t inner, int64_t p0, int64_t pn,
                                       uint64_t *out) {
    const int64_t wc = (c + 63) / 64;
    uint64_t acc[PACK_BLOCK];
    for (int64_t q = 0; q < wc; ++q) {
        const int64_t cn = min64(64, c - 64 * q);
        for (int64_t p = 0; p < pn; ++p) acc[p] = 0;
        for (int64_t cc = 0; cc < cn; ++cc) {
            const float *src = x + (64 * q + cc) * inner + p0;
            const uint64_t bit = (uint64_t)1 << cc;
            for (int64_t p = 0; p < pn; ++p) acc[p] |= src[p] >= 0.0f ? bit : 0;
        }
        for (int64_t p = 0; p < pn; ++p) out[(p0 + p) * wc + q] = acc[p];
    }
}

#if defined(MBK_X86_AVX2)
MBK_TARGET_AVX2 static void pack_channels_block_avx2(const float *x, int64_t c, int64_t inner, int64_t p0,
                                                     int64_t pn, uint64_t *out) {
    const int64_t wc = (c + 63) / 64;
    const __m256 zero = _mm256_setzero_ps();
    uint64_t acc[PACK_BLOCK];
    for (int64_t q = 0; q < wc; ++q) {
        const int64_t cn = min64(64, c - 64 * q);
        for (int64_t p = 0; p < pn; ++p) acc[p] = 0;
        for (int64_t cc = 0; cc < cn; ++cc) {
            const float *src = x + (64 * q + cc) * inner + p0;
            const uint64_t bit = (uint64_t)1 << cc;
            const __m256i vbit = _mm256_slli_epi64(_mm256_set1_epi64x(1), (int)cc);
            int64_t p = 0;
            for (; p + 8 <= pn; p += 8) {
                const __m256i m = _mm256_castps_si256(_mm256_cmp_ps(_mm256_loadu_ps(src + p), zero, _CMP_GE_OQ));
                const __m256i lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(m));
                const __m256i hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(m, 1));
                __m256i *d = (__m256i *)(acc + p);
                _mm256_storeu_si256(d, _mm256_or_si256(_mm256_loadu_si256(d), _mm256_and_si256(lo, vbit)));
                _mm256_storeu_si256(d + 1, _mm256_or_si256(_mm256_loadu_si256(d + 1), _mm256_and_si256(hi, vbit)));
            }
            for (; p < pn; ++p) acc[p] |= src[p] >= 0.0f ? bit : 0;
        }
        for (int64_t p = 0; p < pn; ++p) out[(p0 + p) * wc + q] = acc[p];
    }
}
#endif

int mbk_pack_channels_f32(const float *x, int64_t outer, int64_t c, int64_t inner, uint64_t *out) {
    if (outer < 0 || c < 0 || inner < 0) return MBK_EINVAL;
    if (outer == 0 || c == 0 || inner == 0) return MBK_OK;
    if (x == NULL || out == NULL) return MBK_EINVAL;
    const int64_t wc = (c + 63) / 64, blocks = (inner + PACK_BLOCK - 1) / PACK_BLOCK;
    void (*pack)(const float *, int64_t, int64_t, int64_t, int64_t, uint64_t *) = pack_channels_block_scalar;
#if defined(MBK_X86_AVX2)
    if (active_isa() == ISA_AVX2) pack = pack_channels_block_avx2;
#endif
    const int nthreads = mbk_get_num_threads();
    const int64_t ntasks = outer * blocks;
    const int parallel = nthreads > 1 && ntasks > 1 && outer * c * inner >= (1 << 21); /* see run_job */
    (void)parallel;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nthreads) if (parallel) schedule(static)
#endif
    for (int64_t t = 0; t < ntasks; ++t) {
        const int64_t img = t / blocks, p0 = (t % blocks) * PACK_BLOCK;
        pack(x + img * c * inner, c, inner, p0, min64(PACK_BLOCK, inner - p0), out + img * inner * wc);
    }
    return MBK_OK;
}

int mbk_popcount_rows(const uint64_t *a, int64_t rows, int64_t words, int32_t *out) {
    if (rows < 0 || words < 0 || words > INT32_MAX / 64) return MBK_EINVAL;
    if (rows == 0) return MBK_OK;
    if (out == NULL || (words > 0 && a == NULL)) return MBK_EINVAL;
    for (int64_t r = 0; r < rows; ++r) {
        int64_t total = 0;
        for (int64_t q = 0; q < words; ++q) total += popcount64(a[r * words + q]);
        out[r] = (int32_t)total;
    }
    return MBK_OK;
}
