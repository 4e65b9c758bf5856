// minibnn's binary tensor-core kernels (sm_80 and newer): the xnor GEMM and the binary convolution
// on `mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc`, compiled at run time with NVRTC
// by minibnn/backend/cuda.py when the GPU's compute capability is 8.0 or more (older GPUs, or
// cuda.set_tensor_cores(False), use minibnn_kernels.cu's CUDA-core kernels). Same semantics and
// results as numpy_ref, bit for bit.
//
// One kernel does both operations: a GEMM is a 1x1 convolution of 1x1 "images" (batch = M rows,
// wc = W words, o = N columns). Rows are output pixels, columns output channels, and the reduction
// runs over K = kh * kw * wc words: word kw of pixel p's row is word kw % wc of tap kw / wc's input
// pixel, or of `pad` when that tap lies in the padding (implicit GEMM: no im2col in global memory).
//
// Why and.popc: Hopper runs the `.xor.popc` form about 7x slower, so each dot product is
//   popcount(a XOR b) = popcount(a) + popcount(b) - 2 popcount(a AND b),
// with popcount(b) per output channel computed once by cuda.py (`pb`) and popcount(a) per pixel row
// counted here from the tiles in shared memory as they stream through (it depends on which taps
// fall in the padding). Zero-filled rows and words past the problem add nothing to either count.
//
// A block computes a BM x BN output tile with WM x WN warps; a warp owns (BM / WM) x (BN / WN), i.e.
// FM x FN m16n8 fragments. The K loop moves TC_BKW words (512 bits, two mma steps) per stage, double
// buffered: cp.async copies stage s + 1 into shared memory while the tensor cores work on stage s.
// Shared rows hold 16 data + 4 padding 32-bit words, so the eight rows a fragment load touches fall
// in distinct banks. VW is the words per cp.async: 2 (16 bytes; even wc and 16-byte aligned arrays)
// or 1 (8 bytes). The epilogue (KIND) writes int32 dots, float32 scale * dot + bias (two roundings),
// or packed threshold bits (dot >= threshold) != flip, assembled in shared memory so the next layer
// reads packed words, never floats.
//
// Fragment layouts (../shared/GPU.md, checked on an H200): lane l, g = l >> 2, t = l & 3;
//   a0..a3 = A[g][t], A[g + 8][t], A[g][4 + t], A[g + 8][4 + t]  (32-bit words of 16 rows x 256 bits)
//   b0, b1 = B[col g][t], B[col g][4 + t]                         (8 columns x 256 bits)
//   c0..c3 = C[g][2t], C[g][2t + 1], C[g + 8][2t], C[g + 8][2t + 1]
// Rules of this file, for the host emulator (tests/cuda_emu, which runs each block's threads as
// fibers): no #include; the PTX lives only in the four primitives below; global reads other than
// cp.async go through __ldg.

typedef unsigned long long u64;
typedef long long i64;
typedef unsigned int u32;

#define TC_BKW 8       // uint64 words of K per pipeline stage (512 bits: two m16n8k256 steps)
#define TC_ROW 20      // 32-bit words per shared-memory row: 16 data + 4 padding (conflict-free reads)
#define TC_STAGES 2    // double buffering

// ------------------------------------------------------------------ the PTX primitives

#if defined(__CUDACC__)
// c += popcount(A AND B) per output, one warp, all 32 lanes converged.
__device__ __forceinline__ void mma_and_popc(int (&c)[4], const u32 (&a)[4], const u32 (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Copy BYTES (16 or 8) from global to shared memory asynchronously; zero-fill when !valid.
template <int BYTES>
__device__ __forceinline__ void cp_async(void* smem, const void* global, bool valid) {
    const u32 dst = (u32)__cvta_generic_to_shared(smem);
    const int src_bytes = valid ? BYTES : 0;
    if (BYTES == 16) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(global), "r"(src_bytes)
                     : "memory");
    } else {
        asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(global), "r"(src_bytes)
                     : "memory");
    }
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");  // no shared read moves above it
}
#endif

// ------------------------------------------------------------------ the problem

struct TcProblem {
    const u64* x;     // (batch, h, w, wc) channel-packed pixels (a GEMM: (M, 1, 1, W))
    const u64* wt;    // (o, kh, kw, wc): row c is output channel c's K words
    const u64* pad;   // wc words read by taps in the padding
    const int* pb;    // (o,) popcount of each weight row
    const int* corr;  // (oh, ow, o) padding correction added to the dot (pad_value 0), or null
    i64 pixels;       // batch * oh * ow output rows
    int h, w, wc, o, kh, kw, sh, sw, ph, pw, oh, ow, k, kwords;
};

// The tile's shared memory: the stages, each row's pixel origin, the row popcounts, packed bits.
template <int BM, int BN>
struct TcShared {
    u32 a[TC_STAGES][BM][TC_ROW];
    u32 b[TC_STAGES][BN][TC_ROW];
    i64 image[BM];      // word offset of the row's image in x
    int iy[BM], ix[BM]; // top-left input position of the row's window
    int valid[BM];      // the row is an output pixel (else zero-filled, not stored)
    int pop[BM];        // popcount of the row over all K words
    u32 bits[BM][BN / 32];  // KIND 2: the packed output words of the tile, as 32-bit halves (native atomicOr)
};

__device__ __forceinline__ int block_thread() { return (int)(threadIdx.x + blockDim.x * threadIdx.y); }

// Each row's output pixel: its image and the top-left corner of its window.
template <int BM, int BN, int THREADS>
__device__ __forceinline__ void plan_rows(const TcProblem& g, i64 row0, TcShared<BM, BN>& s) {
    const i64 ohw = (i64)g.oh * g.ow;
    for (int r = block_thread(); r < BM; r += THREADS) {
        const i64 p = row0 + r;
        const bool valid = p < g.pixels;
        const i64 b = valid ? p / ohw : 0, pos = valid ? p - b * ohw : 0;
        const int oy = (int)(pos / g.ow), ox = (int)(pos - (i64)oy * g.ow);
        s.image[r] = b * g.h * g.w * g.wc;
        s.iy[r] = oy * g.sh - g.ph;
        s.ix[r] = ox * g.sw - g.pw;
        s.valid[r] = valid;
        for (int j = 0; j < BN / 32; ++j) s.bits[r][j] = 0;
    }
}

// Issue the copies of K stage kt (words kt * TC_BKW ...) into shared stage `st`.
template <int BM, int BN, int THREADS, int VW>
__device__ __forceinline__ void load_stage(const TcProblem& g, TcShared<BM, BN>& s, int st, int kt, i64 col0) {
    constexpr int per_row = TC_BKW / VW;  // copies per row
    const int tid = block_thread();
    for (int c = tid; c < BM * per_row; c += THREADS) {
        const int r = c / per_row, q0 = (c - r * per_row) * VW;
        const int word = kt * TC_BKW + q0;
        const u64* src = g.x;
        const bool ok = word < g.kwords && s.valid[r];
        if (ok) {
            const int tap = word / g.wc, q = word - tap * g.wc;
            const int ki = tap / g.kw, kj = tap - ki * g.kw;
            const int iy = s.iy[r] + ki, ix = s.ix[r] + kj;
            const bool inside = (unsigned int)iy < (unsigned int)g.h && (unsigned int)ix < (unsigned int)g.w;
            src = inside ? g.x + s.image[r] + ((i64)iy * g.w + ix) * g.wc + q : g.pad + q;
        }
        cp_async<VW * 8>(&s.a[st][r][2 * q0], src, ok);
    }
    for (int c = tid; c < BN * per_row; c += THREADS) {
        const int r = c / per_row, q0 = (c - r * per_row) * VW;
        const int word = kt * TC_BKW + q0;
        const bool ok = word < g.kwords && col0 + r < g.o;
        cp_async<VW * 8>(&s.b[st][r][2 * q0], ok ? g.wt + (col0 + r) * g.kwords + word : g.wt, ok);
    }
}

// The warp's FM x FN fragments of one 256-bit step of stage st: 32-bit words k0 ... k0 + 7 of each row.
template <int BM, int BN, int FM, int FN>
__device__ __forceinline__ void mma_step(const TcShared<BM, BN>& s, int st, int k0, int wrow, int wcol, int lane,
                                         int (&acc)[FM][FN][4]) {
    const int g = lane >> 2, t = lane & 3;
    u32 a[FM][4], b[FN][2];
#pragma unroll
    for (int i = 0; i < FM; ++i) {
        const int r = wrow + i * 16 + g;
        a[i][0] = s.a[st][r][k0 + t];
        a[i][1] = s.a[st][r + 8][k0 + t];
        a[i][2] = s.a[st][r][k0 + 4 + t];
        a[i][3] = s.a[st][r + 8][k0 + 4 + t];
    }
#pragma unroll
    for (int j = 0; j < FN; ++j) {
        const int c = wcol + j * 8 + g;
        b[j][0] = s.b[st][c][k0 + t];
        b[j][1] = s.b[st][c][k0 + 4 + t];
    }
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) mma_and_popc(acc[i][j], a[i], b[j]);
}

// Epilogue KIND 0: int32 dot; 1: float32 scale * dot + bias; 2: packed bit (dot >= threshold) != flip.
struct TcOut {
    const float* scale;
    const float* bias;
    const int* threshold;
    const unsigned char* flip;
    int* out_i;
    float* out_f;
    u64* out_b;
};

// Output (pixel p = tile row r, channel oc = tile column c) of value dot through the epilogue KIND.
template <int KIND, int BM, int BN>
__device__ __forceinline__ void emit(const TcProblem& g, const TcOut& e, TcShared<BM, BN>& s, i64 p, int r, i64 oc,
                                     int c, i64 dot) {
    if (KIND == 0) {
        e.out_i[p * g.o + oc] = (int)dot;
    } else if (KIND == 1) {
        e.out_f[p * g.o + oc] = __fadd_rn(__fmul_rn((float)dot, __ldg(e.scale + oc)), __ldg(e.bias + oc));
    } else {
        const bool bit = (dot >= (i64)__ldg(e.threshold + oc)) != (__ldg(e.flip + oc) != 0);
        if (bit) atomicOr(&s.bits[r][c / 32], 1u << (c % 32));
    }
}

// KIND 2: the tile's packed words to out (pixels, ceil(o / 64)); col0 is a multiple of 64.
template <int BM, int BN, int THREADS>
__device__ __forceinline__ void store_bits(const TcProblem& g, const TcOut& e, const TcShared<BM, BN>& s, i64 row0,
                                           i64 col0) {
    const i64 words = ((i64)g.o + 63) / 64;
    for (int idx = block_thread(); idx < BM * (BN / 64); idx += THREADS) {
        const int r = idx / (BN / 64), j = idx - r * (BN / 64);
        const i64 p = row0 + r, word = col0 / 64 + j;
        if (p < g.pixels && word < words) e.out_b[p * words + word] = s.bits[r][2 * j] | (u64)s.bits[r][2 * j + 1] << 32;
    }
}

template <int BM, int BN, int WM, int WN, int VW, int KIND>
__device__ __forceinline__ void tc_tile(const TcProblem& g, const TcOut& e) {
    constexpr int THREADS = WM * WN * 32, FM = BM / WM / 16, FN = BN / WN / 8;
    static_assert(FM * WM * 16 == BM && FN * WN * 8 == BN && BM <= THREADS && BN % 64 == 0, "tile shape");
    __shared__ __align__(16) TcShared<BM, BN> s;
    const i64 tiles_n = ((i64)g.o + BN - 1) / BN;
    const i64 row0 = (i64)(blockIdx.x / tiles_n) * BM, col0 = (i64)(blockIdx.x % tiles_n) * BN;
    const int tid = block_thread(), lane = tid & 31, warp = tid >> 5;
    const int wrow = (warp / WN) * (BM / WM), wcol = (warp % WN) * (BN / WN);
    plan_rows<BM, BN, THREADS>(g, row0, s);
    __syncthreads();

    int acc[FM][FN][4] = {};
    int pop = 0;  // thread r < BM: popcount of row r
    const int stages = (g.kwords + TC_BKW - 1) / TC_BKW;
    load_stage<BM, BN, THREADS, VW>(g, s, 0, 0, col0);
    cp_async_commit();
    for (int kt = 0; kt < stages; ++kt) {
        const int st = kt % TC_STAGES;
        if (kt + 1 < stages) load_stage<BM, BN, THREADS, VW>(g, s, (kt + 1) % TC_STAGES, kt + 1, col0);
        cp_async_commit();  // an empty group on the last stage keeps the count uniform
        cp_async_wait<1>();  // stage kt has landed (this thread's copies) ...
        __syncthreads();     // ... and everyone's
        if (tid < BM)
#pragma unroll
            for (int q = 0; q < 2 * TC_BKW; ++q) pop += __popc(s.a[st][tid][q]);
        mma_step<BM, BN, FM, FN>(s, st, 0, wrow, wcol, lane, acc);
        if (g.kwords - kt * TC_BKW > TC_BKW / 2)  // a last stage of at most 4 words skips its zero half
            mma_step<BM, BN, FM, FN>(s, st, 8, wrow, wcol, lane, acc);
        __syncthreads();  // stage st is free for kt + 2's copies
    }
    cp_async_wait<0>();  // nothing in flight at exit (k = 0 still issued the first, zero-filled stage)
    if (tid < BM) s.pop[tid] = pop;
    __syncthreads();

    // The epilogue, row by row (c0, c1 of a fragment are row g, c2, c3 row g + 8): with pa = pop[r] and
    // pb[oc], dot = k - 2 (pa + pb - 2 and) (+ the padding correction for pad_value 0).
    const int g8 = lane >> 2, t4 = lane & 3;
    const i64 ohw = (i64)g.oh * g.ow;
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = wrow + i * 16 + g8 + 8 * h;
            const i64 p = row0 + r;
            if (p >= g.pixels) continue;
            const i64 row_part = (i64)g.k - 2 * (i64)s.pop[r];
            const int* corr_row = g.corr ? g.corr + (p % ohw) * g.o : 0;
#pragma unroll
            for (int j = 0; j < FN; ++j)
#pragma unroll
                for (int v = 0; v < 2; ++v) {
                    const int c = wcol + j * 8 + 2 * t4 + v;
                    const i64 oc = col0 + c;
                    if (oc >= g.o) continue;
                    i64 dot = row_part - 2 * (i64)__ldg(g.pb + oc) + 4 * (i64)acc[i][j][2 * h + v];
                    if (corr_row) dot += __ldg(corr_row + oc);
                    emit<KIND, BM, BN>(g, e, s, p, r, oc, c, dot);
                }
        }
    if (KIND == 2) {
        __syncthreads();
        store_bits<BM, BN, THREADS>(g, e, s, row0, col0);
    }
}

// One signature for every kernel (cuda.py passes empty arrays for the unused outputs).
#define MBK_TC_PARAMS                                                                                              \
    const u64 *__restrict__ x, const u64 *__restrict__ wt, const u64 *__restrict__ pad, const int *__restrict__ pb, \
        const int *__restrict__ corr, int has_corr, i64 batch, int h, int w, int wc, int o, int kh, int kw, int sh, \
        int sw, int ph, int pw, int oh, int ow, int k, const float *__restrict__ scale,                              \
        const float *__restrict__ bias, const int *__restrict__ threshold, const unsigned char *__restrict__ flip,   \
        int *__restrict__ out_i, float *__restrict__ out_f, u64 *__restrict__ out_b

__device__ __forceinline__ TcProblem make_problem(const u64* x, const u64* wt, const u64* pad, const int* pb,
                                                  const int* corr, i64 batch, int h, int w, int wc, int o, int kh,
                                                  int kw, int sh, int sw, int ph, int pw, int oh, int ow, int k) {
    TcProblem g;
    g.x = x, g.wt = wt, g.pad = pad, g.pb = pb, g.corr = corr, g.pixels = batch * oh * ow;
    g.h = h, g.w = w, g.wc = wc, g.o = o, g.kh = kh, g.kw = kw, g.sh = sh, g.sw = sw, g.ph = ph, g.pw = pw;
    g.oh = oh, g.ow = ow, g.k = k, g.kwords = kh * kw * wc;
    return g;
}

// MBK_TC_KERNEL(name, BM, BN, WM, WN, VW, KIND): one extern "C" kernel per tile configuration, copy
// width and epilogue (cuda.py's TC_CONFIGS mirrors the shapes; a test checks). The launch bounds allow
// 128 registers a thread: 2 large blocks an SM (one at 132), and without a minimum ptxas capped a
// medium kernel at 72 registers and spilled.
#define MBK_TC_KERNEL(NAME, BM, BN, WM, WN, VW, KIND)                                                         \
    extern "C" __global__ void __launch_bounds__(WM * WN * 32, 65536 / (WM * WN * 32) / 128) NAME(MBK_TC_PARAMS) { \
        const TcProblem g = make_problem(x, wt, pad, pb, has_corr ? corr : 0, batch, h, w, wc, o, kh, kw, sh, sw, \
                                         ph, pw, oh, ow, k);                                                   \
        const TcOut e = {scale, bias, threshold, flip, out_i, out_f, out_b};                                   \
        tc_tile<BM, BN, WM, WN, VW, KIND>(g, e);                                                               \
    }

// large: 128 x 128 tiles, 8 warps of 64 x 32; medium: 64 x 64, 4 warps of 32 x 32;
// skinny (M <= 16, e.g. a fully connected layer at batch 1): 16 x 128, 4 warps of 16 x 32.
MBK_TC_KERNEL(mbk_tc_large_int_v16, 128, 128, 2, 4, 2, 0)
MBK_TC_KERNEL(mbk_tc_large_int_v8, 128, 128, 2, 4, 1, 0)
MBK_TC_KERNEL(mbk_tc_large_affine_v16, 128, 128, 2, 4, 2, 1)
MBK_TC_KERNEL(mbk_tc_large_affine_v8, 128, 128, 2, 4, 1, 1)
MBK_TC_KERNEL(mbk_tc_large_threshold_v16, 128, 128, 2, 4, 2, 2)
MBK_TC_KERNEL(mbk_tc_large_threshold_v8, 128, 128, 2, 4, 1, 2)
MBK_TC_KERNEL(mbk_tc_medium_int_v16, 64, 64, 2, 2, 2, 0)
MBK_TC_KERNEL(mbk_tc_medium_int_v8, 64, 64, 2, 2, 1, 0)
MBK_TC_KERNEL(mbk_tc_medium_affine_v16, 64, 64, 2, 2, 2, 1)
MBK_TC_KERNEL(mbk_tc_medium_affine_v8, 64, 64, 2, 2, 1, 1)
MBK_TC_KERNEL(mbk_tc_medium_threshold_v16, 64, 64, 2, 2, 2, 2)
MBK_TC_KERNEL(mbk_tc_medium_threshold_v8, 64, 64, 2, 2, 1, 2)
MBK_TC_KERNEL(mbk_tc_skinny_int_v16, 16, 128, 1, 4, 2, 0)
MBK_TC_KERNEL(mbk_tc_skinny_int_v8, 16, 128, 1, 4, 1, 0)
MBK_TC_KERNEL(mbk_tc_skinny_affine_v16, 16, 128, 1, 4, 2, 1)
MBK_TC_KERNEL(mbk_tc_skinny_affine_v8, 16, 128, 1, 4, 1, 1)
MBK_TC_KERNEL(mbk_tc_skinny_threshold_v16, 16, 128, 1, 4, 2, 2)
MBK_TC_KERNEL(mbk_tc_skinny_threshold_v8, 16, 128, 1, 4, 1, 2)
