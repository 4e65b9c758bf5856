# %% [markdown]
# # 3. XNOR and popcount
#
# Once weights and activations are $\pm 1$, a dot product needs no multiplications: pack 64 signs into one
# 64-bit word, and a single XOR plus a popcount instruction does 64 multiply-adds. This is where binary
# networks get their speed and their 32x smaller weights.
#
# **You will learn**
# 1. how minibnn packs signs into `uint64` words (bit 1 = $+1$, least significant bit first, tail bits 0), with
#    a picture of the words;
# 2. why $\mathrm{dot}(a, b) = K - 2\,\mathrm{popcount}(a \oplus b)$, computed here by hand;
# 3. how a binary convolution pads its border with $+1$, $-1$ or $0$, and why 0 (which has no bit) needs a
#    correction term;
# 4. how fast the kernels are: the NumPy reference against the native C kernel against a float32 matrix
#    product (a bar chart).

# %%
import os
import time
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")   # tqdm without ipywidgets
QUICK = os.environ.get("MINIBNN_QUICK", "0") not in ("", "0")   # the tests set MINIBNN_QUICK=1

import matplotlib.pyplot as plt
import numpy as np

import minibnn
from minibnn import Tensor
from minibnn import functional as F
from minibnn.backend import numpy_ref as ref

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (6, 3)})
HAVE_NATIVE = "native" in minibnn.backend.available()
if HAVE_NATIVE:
    from minibnn.backend import native
rng = np.random.default_rng(0)
print(f"minibnn {minibnn.__version__}, {'quick' if QUICK else 'full'} mode, native kernels: "
      f"{native.simd() + ', ' + str(native.get_num_threads()) + ' threads' if HAVE_NATIVE else 'not built'}")

# %% [markdown]
# ## 1. Packing signs into words
#
# `pack_bits(x, axis)` takes the sign of every value along `axis` (bit 1 for $x \ge 0$) and packs them into
# `uint64` words, the first value in the least significant bit. $K = 100$ values need
# $\lceil 100 / 64 \rceil = 2$ words; the last 28 bits of the second word are **tail bits**, always 0.

# %%
K = 100
a = rng.normal(size=K).astype(np.float32)
words = ref.pack_bits(a)
print(words.dtype, words.shape, [f"0x{int(w):016x}" for w in words])

bits = np.where(a >= 0, 1, 0)
by_hand = [sum(int(bits[64 * j + i]) << i for i in range(min(64, K - 64 * j))) for j in range(2)]
assert [int(w) for w in words] == by_hand                         # bit i of word j is value 64 j + i
assert int(words[1]) >> (K - 64) == 0                             # the tail bits are 0
assert np.array_equal(ref.unpack_bits(words, K), np.where(a >= 0, 1.0, -1.0))

# %%
picture = np.full((2, 64), 2)                                     # 2 = tail bit
picture.flat[:K] = bits
fig, ax = plt.subplots(figsize=(10, 1.9))
ax.imshow(picture, cmap=plt.matplotlib.colors.ListedColormap(["#f4cccc", "#3d85c6", "#dddddd"]),
          aspect="auto", vmin=0, vmax=2)
for j in range(2):
    for i in range(64):
        label = "" if picture[j, i] == 2 else str(picture[j, i])
        ax.text(i, j, label, ha="center", va="center", fontsize=6, color="w" if picture[j, i] == 1 else "k")
ax.set_xticks([0, 15, 31, 47, 63])
ax.set_xticklabels(["bit 0 (LSB)", "15", "31", "47", "bit 63"])
ax.set_yticks([0, 1])
ax.set_yticklabels([f"word 0 = 0x{int(words[0]):016x}", f"word 1 = 0x{int(words[1]):016x}"], fontsize=8)
ax.set_title(f"{K} signs in two uint64 words: blue = 1 (+1), pink = 0 (-1), grey = tail bits (always 0)",
             fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The dot product by hand
#
# For $\pm 1$ values a product is $+1$ when the two signs agree and $-1$ when they differ. XOR marks exactly
# the differences, so with $d = \mathrm{popcount}(a \oplus b)$ differing positions out of $K$:
#
# $$\mathrm{dot}(a, b) = (K - d) - d = K - 2\,\mathrm{popcount}(a \oplus b).$$
#
# The tail bits are 0 in both operands, so their XOR is 0 and they never count; the true $K$ (not
# $64 \times$ words) goes into the formula. BMXNet's kernels returned the number of agreements
# $(K + \mathrm{dot}) / 2$ instead: the same information, an affine map away.

# %%
b = (a + rng.normal(scale=0.8, size=K)).astype(np.float32)   # like a, with noise: mostly the same signs
b_words = ref.pack_bits(b)
differences = sum(int(x ^ y).bit_count() for x, y in zip(words, b_words))   # popcount of each XOR'd word
dot_bits = K - 2 * differences
dot_float = float(np.where(a >= 0, 1, -1) @ np.where(b >= 0, 1, -1))
print(f"popcount(a XOR b) = {differences}, K - 2 * popcount = {dot_bits}, float dot of the signs = {dot_float:.0f}")
assert dot_bits == dot_float

# %% [markdown]
# A whole matrix product works the same way, row against row: `xnor_gemm(a_words, b_words, K, out)` computes
# `out[m, n] = K - 2 popcount(a[m] XOR b[n])` for packed rows (both operands packed along $K$, so the weights
# are stored `(N, words)`, as a `Dense` layer's `(out, in)`).

# %%
A = rng.normal(size=(5, 300)).astype(np.float32)
B = rng.normal(size=(7, 300)).astype(np.float32)
out = ref.xnor_gemm(ref.pack_bits(A), ref.pack_bits(B), 300, np.empty((5, 7), np.int32))
print(out)
assert np.array_equal(out, np.where(A >= 0, 1, -1) @ np.where(B >= 0, 1, -1).T)

# %% [markdown]
# ## 3. Padding a binary convolution: $+1$, $-1$, or 0
#
# A convolution with padding reads outside the image. A float network pads with 0, but a bit can only say
# $+1$ or $-1$. minibnn's `QConv2d(pad_value=...)` offers all three, and the packed kernel reproduces each exactly:
#
# * $-1$ padding: padded pixels are words of 0 bits;
# * $+1$ padding: padded pixels have 1 bits, but only on the $C$ valid channel bits (the tail stays 0!);
# * $0$ padding: compute with $-1$ padding, then add back what the padded taps took away. A padded tap
#   contributed $(-1) \cdot w$ where it should have contributed 0, so the correction for an output position is
#   $\sum_{\text{padded taps}} \sum_c w[o, c, \text{tap}]$: it depends only on the weights and on how near the
#   position is to the border, so it is computed once per layer (`conv_pad_correction`).
#
# The float simulation below pads $\mathrm{sign}(x)$ with the value and runs a float convolution; the packed
# kernel must give the same integers.

# %%
C, O, H, W = 3, 4, 6, 6
x = rng.normal(size=(1, C, H, W)).astype(np.float32)
w = rng.normal(size=(O, C, 3, 3)).astype(np.float32)
xs, ws = np.where(x >= 0, 1.0, -1.0).astype(np.float32), np.where(w >= 0, 1.0, -1.0).astype(np.float32)
x_words = ref.pack_channels(x)                                   # (N, H, W, words): NHWC, packed along C
w_words = ref.pack_bits(w.transpose(0, 2, 3, 1), axis=-1)        # (O, kh, kw, words)

packed, simulated = {}, {}
for pad in (0, 1, -1):
    y = np.empty((1, H, W, O), np.int32)
    packed[pad] = ref.binary_conv2d(x_words, w_words, C, 1, 1, pad, y).transpose(0, 3, 1, 2)  # C, stride, padding
    padded = np.pad(xs, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=pad)
    simulated[pad] = F.conv2d(Tensor(padded), Tensor(ws)).numpy()
    print(f"pad_value {pad:+d}: packed == float simulation: {np.array_equal(packed[pad], simulated[pad])}")
    assert np.array_equal(packed[pad], simulated[pad])

correction = ref.conv_pad_correction(w_words, C, (H, W), 1, 1)   # (OH, OW, O)
assert np.array_equal(packed[-1] + correction.transpose(2, 0, 1)[None], packed[0])
assert np.all(correction[1:-1, 1:-1] == 0)                       # inside the image nothing is padded

# %%
fig, axes = plt.subplots(1, 4, figsize=(11, 3))
for ax, pad in zip(axes, (0, 1, -1)):
    padded = np.pad(xs[0, 0], 1, constant_values=pad)
    ax.imshow(padded, cmap="coolwarm_r", vmin=-1, vmax=1)
    ax.add_patch(plt.Rectangle((0.5, 0.5), W, H, fill=False, ec="k", lw=1.5))   # the image inside its padding
    ax.set_title(f"channel 0, pad_value {pad:+d}", fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
limit = np.abs(correction[:, :, 0]).max()
axes[3].imshow(correction[:, :, 0], cmap="PuOr", vmin=-1.6 * limit, vmax=1.6 * limit)
for (i, j), v in np.ndenumerate(correction[:, :, 0]):
    axes[3].text(j, i, str(v), ha="center", va="center", fontsize=8)
axes[3].set_title("correction, output channel 0\n(added to the -1 result)", fontsize=9)
axes[3].set_xticks([]), axes[3].set_yticks([])
plt.tight_layout()
plt.show()

# %% [markdown]
# The correction is 0 inside the image and depends on the weights along the border: an edge position has 3 of
# its 9 taps in the padding, a corner 5. $\pm 1$ padding needs no correction at all, which is why
# deployment-minded libraries offer it (Larq's `pad_values=1`): one addition less per output, and a network
# trained with it never sees a 0.

# %% [markdown]
# ## 4. How fast? NumPy reference, native C, float32 matmul
#
# The reference kernel is a few lines of NumPy (`np.bitwise_count` over broadcast XORs): obviously right,
# the oracle the tests compare everything with, and slow. The native kernel is C with AVX2 popcounts (or NEON,
# or portable scalar code) and OpenMP threads. Both compute an $M \times N$ product over $K$, compared with
# `numpy.matmul` of float32 at the same shape (OpenBLAS, all cores). Each is timed as its best of a few runs.

# %%
M, N, K = (128, 128, 2048) if QUICK else (512, 512, 8192)
A = rng.normal(size=(M, K)).astype(np.float32)
B = rng.normal(size=(N, K)).astype(np.float32)
A_words, B_words = ref.pack_bits(A, axis=1), ref.pack_bits(B, axis=1)
A_sign, Bt_sign = np.where(A >= 0, 1, -1).astype(np.float32), np.ascontiguousarray(np.where(B >= 0, 1, -1).T.astype(np.float32))


def best_time(fn, repeats):
    fn()                                                         # warm up (caches, thread pools)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


out_ref, out_native = np.empty((M, N), np.int32), np.empty((M, N), np.int32)
timings = {"NumPy reference\nxnor_gemm": best_time(lambda: ref.xnor_gemm(A_words, B_words, K, out_ref), 2)}
if HAVE_NATIVE:
    timings["native C\nxnor_gemm"] = best_time(lambda: native.xnor_gemm(A_words, B_words, K, out_native), 5)
timings["float32\nnumpy.matmul"] = best_time(lambda: A_sign @ Bt_sign, 5)

reference = (A_sign @ Bt_sign).astype(np.int32)                 # exact: integers below 2^24
assert np.array_equal(out_ref, reference)
if HAVE_NATIVE:
    assert np.array_equal(out_native, reference)
for name, seconds in timings.items():
    print(f"{name.replace(chr(10), ' '):<32} {seconds * 1e3:8.2f} ms  {M * N * K / seconds / 1e9:8.1f} G MAC/s")

# %%
names = list(timings)
rates = [M * N * K / timings[n] / 1e9 for n in names]
fig, ax = plt.subplots(figsize=(7, 2.8))
bars = ax.barh(names, rates, color=["#999999", "#3d85c6", "#e69138"][: len(names)] if HAVE_NATIVE
               else ["#999999", "#e69138"])
ax.set_xscale("log")
ax.set_xlabel("(bit-)multiply-accumulates per second (G MAC/s, log scale)")
ax.set_title(f"M = {M}, N = {N}, K = {K}  ({os.cpu_count()} CPU cores)", fontsize=9)
for bar, rate in zip(bars, rates):
    ax.text(rate, bar.get_y() + bar.get_height() / 2, f" {rate:,.1f}", va="center", fontsize=8)
ax.set_xlim(min(rates) / 2, max(rates) * 8)
ax.invert_yaxis()
plt.tight_layout()
plt.show()
if HAVE_NATIVE:
    speedup = timings["float32\nnumpy.matmul"] / timings["native C\nxnor_gemm"]
    print(f"native xnor_gemm is {speedup:.1f}x float32 matmul and "
          f"{timings['NumPy reference' + chr(10) + 'xnor_gemm'] / timings['native C' + chr(10) + 'xnor_gemm']:.0f}x "
          f"the NumPy reference at this shape")
assert all(r > 0 for r in rates)

# %% [markdown]
# On a modern x86 core the popcount kernel does roughly ten times the multiply-accumulates per second of
# float32 matrix code (about 300 G bit-MAC/s against 30-40 G MAC/s per core; BENCHMARKS.md section 4 has the
# measurements), and it
# reads 32x fewer bytes. The measured ratio depends on the shape, the cache sizes and how busy the machine is:
# small shapes are dominated by overheads (quick mode uses a small one), and on a shared machine a
# multi-threaded BLAS suffers most from other busy processes. `benchmarks/` and BENCHMARKS.md have the careful
# measurements.

# %% [markdown]
# ## What to try next
#
# * Pack along another axis: `ref.pack_bits(x, axis=0)` moves that axis last before packing.
# * Change `K` to 64, 65 and 127 and look at the tail bits; then set a tail bit by hand
#   (`words[-1] |= 1 << 63`) and see `ref.xnor_gemm` refuse the words.
# * Time `native.xnor_gemm` with `native.set_num_threads(1)` and with all cores; try
#   `native.set_simd("scalar")` to see what AVX2 buys.
# * Look at `xnor_gemm_threshold` in `minibnn/backend/numpy_ref.py`: it writes packed bits directly, the
#   trick notebook **6. From training to deployment** uses to chain binary layers without ever leaving bits.
