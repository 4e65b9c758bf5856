// Host shim: lets g++ compile native/cuda/minibnn_kernels.cu as plain C++14, so the tests run the
// real kernel source on the CPU (tests/cuda_emu/emulator.cpp includes this header, then the .cu).
//
// A launch runs every thread of every block one after another (the kernels are written so that
// threads are independent: no shared memory, no barriers, no warp intrinsics). Every global read
// goes through __ldg, which checks the address against the arrays of the current launch: a read
// outside them is recorded (and returns 0) instead of touching memory, and the launch fails.
#pragma once

#include <cstddef>
#include <cstdint>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
// __restrict__ is a g++ keyword already

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(16) ulonglong2 {
    unsigned long long x, y;
};

thread_local uint3 threadIdx, blockIdx;
thread_local dim3 blockDim, gridDim;

inline int __popc(unsigned int v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }

// round-to-nearest float32 multiply and add, never fused (built with -ffp-contract=off)
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }

// ---- bounds-checked reads

namespace emu {
struct Range {
    const char* begin;
    const char* end;
};
constexpr int kMaxRanges = 32;
thread_local Range ranges[kMaxRanges];
thread_local int n_ranges = 0;
thread_local long long bad_reads = 0;
thread_local const void* first_bad = nullptr;
thread_local int first_bad_size = 0;

inline bool readable(const void* p, std::size_t size) {
    const char* c = static_cast<const char*>(p);
    for (int i = 0; i < n_ranges; ++i)
        if (c >= ranges[i].begin && c + size <= ranges[i].end) return true;
    return false;
}
}  // namespace emu

template <typename T>
inline T __ldg(const T* p) {
    if (!emu::readable(p, sizeof(T))) {
        if (emu::bad_reads++ == 0) emu::first_bad = p, emu::first_bad_size = (int)sizeof(T);
        return T();
    }
    if (reinterpret_cast<std::uintptr_t>(p) % alignof(T) != 0) {  // a GPU faults on a misaligned load
        if (emu::bad_reads++ == 0) emu::first_bad = p, emu::first_bad_size = -(int)sizeof(T);
        return T();
    }
    return *p;
}
