// Host shim for the cooperative kernels (native/cuda/minibnn_tc.cu): shared memory, __syncthreads,
// cp.async and the warp-wide b1 mma, on top of cuda_shim.h.
//
// A block's threads run as fibers (ucontext) in one OS thread: each runs until it reaches a barrier
// (__syncthreads, or the warp rendezvous inside mma_and_popc) or returns, then the next one runs.
// The scheduler releases a warp when its 32 lanes wait at the rendezvous and the block when every
// thread waits at __syncthreads; anything else that stops all threads (a barrier some threads never
// reach, an mma in a diverged warp) is a deadlock, reported as an error instead of hanging.
// `__shared__` variables become function statics: one copy, shared by the block's fibers (blocks
// run one after another). cp.async copies are queued per thread and done only when cp_async_wait
// retires their group, so a kernel that reads shared memory before waiting reads stale data.
// The hostile schedule (emu_set_hostile(1)) instead copies at once and always runs the highest
// runnable thread next, releasing a warp as soon as its lanes meet: the last warp races ahead to the
// next block barrier, so a stage overwritten before slower warps are done with it (a missing
// __syncthreads) changes the results. Races that need other interleavings are not detected.
// mma_and_popc gathers the 32 lanes' fragments and computes C += popcount(A AND B) per output
// with the register layout of ../shared/GPU.md (checked bit for bit on an H200).
#pragma once

#include <ucontext.h>

#include <cstring>
#include <deque>
#include <vector>

#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

typedef unsigned int u32;

namespace emu {

struct Copy {
    void* dst;
    const void* src;
    int bytes;
    bool valid;
};

enum State { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kDone };

struct Fiber {
    ucontext_t ctx;
    std::vector<char> stack;
    uint3 tid;
    int linear = 0;
    State state = kRunnable;
    std::vector<Copy> open;                  // cp.async since the last commit
    std::deque<std::vector<Copy>> groups;    // committed, not yet retired
};

struct WarpSlots {
    u32 a[32][4];
    u32 b[32][2];
};

thread_local std::vector<Fiber> fibers;
thread_local std::vector<WarpSlots> warps;
thread_local Fiber* current = nullptr;
thread_local ucontext_t scheduler;
thread_local const char* coop_error = nullptr;  // a deadlock or misuse seen in the last launch
thread_local bool hostile = false;              // eager copies, highest thread first (see above)

inline void note_bad_read(const void* p, int size) {
    if (bad_reads++ == 0) first_bad = p, first_bad_size = size;
}

inline void wait_at(State state) {
    current->state = state;
    swapcontext(&current->ctx, &scheduler);
}

inline void retire(std::vector<Copy>& group) {
    for (const Copy& c : group) {
        if (!c.valid) {
            std::memset(c.dst, 0, c.bytes);
        } else if (!readable(c.src, c.bytes)) {
            note_bad_read(c.src, c.bytes);
            std::memset(c.dst, 0, c.bytes);
        } else if (reinterpret_cast<std::uintptr_t>(c.src) % c.bytes != 0 ||
                   reinterpret_cast<std::uintptr_t>(c.dst) % c.bytes != 0) {
            note_bad_read(c.src, -c.bytes);  // cp.async needs both addresses aligned to the copy size
            std::memset(c.dst, 0, c.bytes);
        } else {
            std::memcpy(c.dst, c.src, c.bytes);
        }
    }
}

}  // namespace emu

inline void __syncthreads() { emu::wait_at(emu::kAtBlockBarrier); }

template <int BYTES>
inline void cp_async(void* smem, const void* global, bool valid) {
    static_assert(BYTES == 16 || BYTES == 8 || BYTES == 4, "cp.async copies 4, 8 or 16 bytes");
    emu::current->open.push_back(emu::Copy{smem, global, BYTES, valid});
    if (emu::hostile) {  // the copy lands at once (a GPU may do that too)
        emu::retire(emu::current->open);
        emu::current->open.clear();
    }
}

inline void cp_async_commit() {
    emu::current->groups.push_back(std::move(emu::current->open));
    emu::current->open.clear();
}

template <int N>
inline void cp_async_wait() {
    auto& groups = emu::current->groups;
    while ((int)groups.size() > N) {
        emu::retire(groups.front());
        groups.pop_front();
    }
}

template <typename T>
inline T atomicOr(T* p, T v) {  // unsigned int and unsigned long long, as CUDA's overloads
    const T old = *p;  // fibers never interleave inside a call
    *p |= v;
    return old;
}

inline void mma_and_popc(int (&c)[4], const u32 (&a)[4], const u32 (&b)[2]) {
    const int lane = emu::current->linear & 31;
    emu::WarpSlots& w = emu::warps[emu::current->linear >> 5];
    std::memcpy(w.a[lane], a, sizeof a);
    std::memcpy(w.b[lane], b, sizeof b);
    emu::wait_at(emu::kAtWarpBarrier);  // every lane has deposited its fragments
    auto A = [&](int row, int word) { return w.a[(row & 7) * 4 + (word & 3)][(row >> 3) + 2 * (word >> 2)]; };
    auto B = [&](int col, int word) { return w.b[col * 4 + (word & 3)][word >> 2]; };
    const int g = lane >> 2, t = lane & 3;
    const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    int d[4];
    for (int v = 0; v < 4; ++v) {
        int sum = 0;
        for (int word = 0; word < 8; ++word) sum += __builtin_popcount(A(rows[v], word) & B(cols[v], word));
        d[v] = c[v] + sum;
    }
    emu::wait_at(emu::kAtWarpBarrier);  // every lane has read the fragments before any reuses its slot
    for (int v = 0; v < 4; ++v) c[v] = d[v];
}

namespace emu {

constexpr std::size_t kStack = 256 * 1024;

typedef void (*Body)(void*);
thread_local Body body_fn;
thread_local void* body_arg;

inline void fiber_main() {
    body_fn(body_arg);
    current->state = kDone;  // returning resumes uc_link: the scheduler
}

// Run one block of `threads` threads as fibers; returns nullptr or what went wrong.
inline const char* run_block(dim3 block, Body body, void* arg) {
    const int threads = (int)(block.x * block.y * block.z);
    if (threads % 32 != 0) return "a cooperative kernel's block must be a whole number of warps";
    if ((int)fibers.size() < threads) fibers.resize(threads);
    warps.resize(threads / 32);
    body_fn = body, body_arg = arg;
    for (int i = 0; i < threads; ++i) {
        Fiber& f = fibers[i];
        if (f.stack.empty()) f.stack.resize(kStack);
        f.linear = i;
        f.tid = uint3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
        f.state = kRunnable;
        f.open.clear();
        f.groups.clear();
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.data();
        f.ctx.uc_stack.ss_size = f.stack.size();
        f.ctx.uc_link = &scheduler;
        makecontext(&f.ctx, fiber_main, 0);
    }
    auto resume = [](Fiber& f) {
        current = &f;
        threadIdx = f.tid;
        swapcontext(&scheduler, &f.ctx);
    };
    for (;;) {
        bool ran = false;
        if (hostile) {  // the highest runnable thread; its warp goes on as soon as all its lanes meet
            for (int i = threads - 1; i >= 0 && !ran; --i) {
                if (fibers[i].state != kRunnable) continue;
                resume(fibers[i]);
                ran = true;
                Fiber* lanes = &fibers[i & ~31];
                bool met = true;
                for (int l = 0; l < 32; ++l) met = met && lanes[l].state == kAtWarpBarrier;
                if (met)
                    for (int l = 0; l < 32; ++l) lanes[l].state = kRunnable;
            }
        } else {
            for (int i = 0; i < threads; ++i) {
                if (fibers[i].state != kRunnable) continue;
                resume(fibers[i]);
                ran = true;
            }
        }
        if (ran) continue;
        int done = 0, at_block = 0;
        for (int i = 0; i < threads; ++i) done += fibers[i].state == kDone, at_block += fibers[i].state == kAtBlockBarrier;
        if (done == threads) return nullptr;
        bool released = false;
        for (int w = 0; w < threads / 32; ++w) {
            bool all = true;
            for (int l = 0; l < 32; ++l) all = all && fibers[w * 32 + l].state == kAtWarpBarrier;
            if (all)
                for (int l = 0; l < 32; ++l) fibers[w * 32 + l].state = kRunnable, released = true;
        }
        if (released) continue;
        if (at_block == threads) {
            for (int i = 0; i < threads; ++i) fibers[i].state = kRunnable;
            continue;
        }
        return at_block && done ? "deadlock: some threads returned while others wait at __syncthreads"
                                : "deadlock: a warp-wide mma or a barrier that not every thread reaches";
    }
}

}  // namespace emu
