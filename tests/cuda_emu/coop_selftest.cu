// Kernels that check the cooperative emulator itself (tests/test_cuda_tensor_cores.py): one b1 mma
// written straight from the fragment table of ../shared/GPU.md, and two broken kernels that the
// emulator must report as deadlocks instead of hanging. On a GPU the test compiles the same mma
// kernel with cupy (the #include replaced by the file) so the table is checked against the hardware.
#include "minibnn_tc.cu"

// A: 16 rows x 8 words, B: 8 columns x 8 words (32-bit words), C: 16 x 8 int32 = popcount(A AND B).
extern "C" __global__ void emu_mma_once(const u32* __restrict__ a, const u32* __restrict__ b, int* __restrict__ c) {
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    const u32 af[4] = {__ldg(a + g * 8 + t), __ldg(a + (g + 8) * 8 + t), __ldg(a + g * 8 + 4 + t),
                       __ldg(a + (g + 8) * 8 + 4 + t)};
    const u32 bf[2] = {__ldg(b + g * 8 + t), __ldg(b + g * 8 + 4 + t)};
    int acc[4] = {0, 0, 0, 0};
    mma_and_popc(acc, af, bf);
    c[g * 8 + 2 * t] = acc[0];
    c[g * 8 + 2 * t + 1] = acc[1];
    c[(g + 8) * 8 + 2 * t] = acc[2];
    c[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

// Half the block skips the barrier.
extern "C" __global__ void emu_diverged_barrier(int* __restrict__ out) {
    if (threadIdx.x < 16) __syncthreads();
    out[threadIdx.x] = 1;
}

// Half a warp calls the warp-wide mma.
extern "C" __global__ void emu_diverged_mma(int* __restrict__ out) {
    int acc[4] = {0, 0, 0, 0};
    const u32 a[4] = {1, 1, 1, 1}, b[2] = {1, 1};
    if (threadIdx.x < 16) mma_and_popc(acc, a, b);
    out[threadIdx.x] = acc[0];
}
