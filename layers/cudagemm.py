"""Shared CUDA helpers: a tiled shared-memory SGEMM and reductions (the fused activations
are layers/neuron/cuda.py's).

GEMM. `gemm(stream, m, n, k, a, b, c, ...)` computes, for every batch index z,

    C_z = alpha * op(A_z) @ op(B_z) + beta * C_z        (m x n, inner dimension k)

on flat, row-major float32 storage with BLAS-like leading dimensions, so a transpose is
only a change of strides and one kernel serves all four op combinations. Batch z (grid
z dimension) adds z * stride_{a,b,c} to each operand's offset: the groups of a conv, or
per-image products, are one launch. Each block computes a TILE_M x TILE_N tile of C
with 16 x 16 threads, each thread a RM x RN register block (rows ty + 16 r, columns
tx + 16 q, so shared-memory reads and global writes are conflict-free and coalesced);
A and B go through shared memory TILE_K columns at a time. Products with a long inner
dimension and few tiles (conv dW: k = N*OH*OW) split k across more blocks ("split-K"):
each split writes a partial product into a scratch buffer, and a second kernel sums the
splits in a fixed order (deterministic, no atomics).

Every constant is float32, so nothing is promoted to float64 on the device.
"""

import numpy as np
from numba import cuda, float32

from layers.cudabase import block_sum, blocks_for  # noqa: F401  (blocks_for: re-exported for conv and fc)

# Device functions are inlined at the Numba IR level. Besides speed, this matters for
# tests: numba-cuda 0.30 compiles a *non-inlined* device function for the current
# device's CC, which needs a driver, so cuda.compile_ptx of a kernel calling one fails
# on a machine without a GPU. With inline="always" it compiles anywhere (and the
# simulator accepts the option).
INLINE = {"inline": "always"}

# ---- tile geometry (compile-time constants: shared/local array sizes) --------------------
TILE_M = 64            # rows of C per block
TILE_N = 64            # columns of C per block
TILE_K = 16            # inner-dimension slice staged in shared memory
THREADS_X = 16         # threads along columns
THREADS_Y = 16         # threads along rows
NT = THREADS_X * THREADS_Y            # 256 threads per block
RM = TILE_M // THREADS_Y              # 4 rows per thread
RN = TILE_N // THREADS_X              # 4 columns per thread
A_LD = TILE_M + 1      # shared row length, padded against bank conflicts on transposed loads
B_LD = TILE_N + 1
A_LOADS = TILE_M * TILE_K // NT       # elements of the A tile each thread loads
B_LOADS = TILE_N * TILE_K // NT
assert TILE_K == 16, "the k loop of gemm_kernel is written out for 16 steps"
assert RM * THREADS_Y == TILE_M and RN * THREADS_X == TILE_N
assert A_LOADS * NT == TILE_M * TILE_K and B_LOADS * NT == TILE_N * TILE_K

RBLOCK = 128           # threads per block of the reduction kernels (a power of two)
EBLOCK = 128           # threads per block of element-wise kernels

TARGET_BLOCKS = 264    # split-K aims for about 2 blocks per SM of an H100 (132 SMs)
MIN_SPLIT_K = 256      # ... but never less inner dimension than this per split
MAX_SPLITS = 64


# ---- GEMM ---------------------------------------------------------------------------------
@cuda.jit(device=True, **INLINE)
def _mac_step(a_s, b_s, kk, ty, tx, acc, a_r, b_r):
    """acc += column kk of the A tile (this thread's rows) x row kk of the B tile."""
    for r in range(RM):
        a_r[r] = a_s[kk, ty + r * THREADS_Y]
    for q in range(RN):
        b_r[q] = b_s[kk, tx + q * THREADS_X]
    for r in range(RM):
        for q in range(RN):
            acc[r, q] += a_r[r] * b_r[q]


@cuda.jit(device=True, **INLINE)
def _mac_4(a_s, b_s, k0, ty, tx, acc, a_r, b_r):
    _mac_step(a_s, b_s, k0, ty, tx, acc, a_r, b_r)
    _mac_step(a_s, b_s, k0 + 1, ty, tx, acc, a_r, b_r)
    _mac_step(a_s, b_s, k0 + 2, ty, tx, acc, a_r, b_r)
    _mac_step(a_s, b_s, k0 + 3, ty, tx, acc, a_r, b_r)


@cuda.jit
def gemm_kernel(m, n, k, kchunk, splits, alpha,
                a, off_a, bs_a, sa_i, sa_k,
                b, off_b, bs_b, sb_k, sb_j,
                beta, c, off_c, bs_c, ss_c, ldc):
    """One TILE_M x TILE_N tile of C = alpha op(A) op(B) + beta C for batch z // splits,
    over the inner range of split z % splits.

    op(A)[i, l] = a[off_a + batch*bs_a + i*sa_i + l*sa_k]
    op(B)[l, j] = b[off_b + batch*bs_b + l*sb_k + j*sb_j]
    C[i, j]     = c[off_c + batch*bs_c + split*ss_c + i*ldc + j]
    beta is ignored (C is only written) when it is 0, so C may hold garbage."""
    a_s = cuda.shared.array((TILE_K, A_LD), float32)
    b_s = cuda.shared.array((TILE_K, B_LD), float32)
    acc = cuda.local.array((RM, RN), float32)
    a_r = cuda.local.array(RM, float32)
    b_r = cuda.local.array(RN, float32)

    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * THREADS_X + tx
    z = cuda.blockIdx.z
    batch = z // splits
    split = z - batch * splits
    row0 = cuda.blockIdx.y * TILE_M
    col0 = cuda.blockIdx.x * TILE_N
    a_base = off_a + batch * bs_a
    b_base = off_b + batch * bs_b
    k_begin = split * kchunk
    k_end = min(k, k_begin + kchunk)
    # a thread whose every row or every column lies outside C only helps load the tiles
    # (edge tiles: idle warps finish early; the simulator skips their Python work)
    active = row0 + ty < m and col0 + tx < n
    a_kfast = sa_k == 1            # choose the load order that reads memory contiguously
    b_jfast = sb_j == 1

    for r in range(RM):
        for q in range(RN):
            acc[r, q] = float32(0.0)

    for k0 in range(k_begin, k_end, TILE_K):
        for t in range(A_LOADS):
            idx = tid + t * NT
            if a_kfast:
                ii = idx // TILE_K
                kk = idx - ii * TILE_K
            else:
                kk = idx // TILE_M
                ii = idx - kk * TILE_M
            gi = row0 + ii
            gk = k0 + kk
            v = float32(0.0)
            if gi < m and gk < k_end:
                v = a[a_base + gi * sa_i + gk * sa_k]
            a_s[kk, ii] = v
        for t in range(B_LOADS):
            idx = tid + t * NT
            if b_jfast:
                kk = idx // TILE_N
                jj = idx - kk * TILE_N
            else:
                jj = idx // TILE_K
                kk = idx - jj * TILE_K
            gj = col0 + jj
            gk = k0 + kk
            v = float32(0.0)
            if gj < n and gk < k_end:
                v = b[b_base + gk * sb_k + gj * sb_j]
            b_s[kk, jj] = v
        cuda.syncthreads()
        if active:
            # the 16 steps written out: constant shared-memory offsets, no loop overhead
            _mac_4(a_s, b_s, 0, ty, tx, acc, a_r, b_r)
            _mac_4(a_s, b_s, 4, ty, tx, acc, a_r, b_r)
            _mac_4(a_s, b_s, 8, ty, tx, acc, a_r, b_r)
            _mac_4(a_s, b_s, 12, ty, tx, acc, a_r, b_r)
        cuda.syncthreads()

    c_base = off_c + batch * bs_c + split * ss_c
    for r in range(RM):
        gi = row0 + ty + r * THREADS_Y
        if gi < m:
            for q in range(RN):
                gj = col0 + tx + q * THREADS_X
                if gj < n:
                    idx = c_base + gi * ldc + gj
                    v = alpha * acc[r, q]
                    if beta != float32(0.0):
                        v += beta * c[idx]
                    c[idx] = v


@cuda.jit
def splitk_reduce(ws, splits, m, n, batches, beta, c, off_c, bs_c, ldc):
    """C[z][i, j] = sum_s ws[(z*splits + s)*m*n + i*n + j] (+ beta C), summed in order."""
    t = cuda.grid(1)
    mn = m * n
    if t < batches * mn:
        z = t // mn
        e = t - z * mn
        i = e // n
        j = e - i * n
        src = z * splits * mn + e
        v = float32(0.0)
        for s in range(splits):
            v += ws[src + s * mn]
        idx = off_c + z * bs_c + i * ldc + j
        if beta != float32(0.0):
            v += beta * c[idx]
        c[idx] = v


def _flat(arr):
    return arr if arr.ndim == 1 else arr.reshape(arr.size)


def plan_splits(m, n, k, batch=1):
    """How many inner-dimension splits make enough blocks for the GPU (1: no split)."""
    tiles = blocks_for(m, TILE_M) * blocks_for(n, TILE_N) * batch
    if tiles >= TARGET_BLOCKS or k < 2 * MIN_SPLIT_K:
        return 1
    return int(max(1, min(MAX_SPLITS, -(-TARGET_BLOCKS // tiles), k // MIN_SPLIT_K)))


def _check(name, arr, off, stride, batch, extents):
    """Host-side bounds check of the largest index an operand is read or written at."""
    last = off + (batch - 1) * stride + sum((e - 1) * s for e, s in extents)
    if off < 0 or last >= arr.size:
        raise ValueError(f"gemm: operand {name} needs index {last} but has {arr.size} elements")


def gemm(stream, m, n, k, a, b, c, trans_a=False, trans_b=False, lda=None, ldb=None, ldc=None,
         off_a=0, off_b=0, off_c=0, batch=1, stride_a=0, stride_b=0, stride_c=0,
         alpha=1.0, beta=0.0, splits=None, scratch=None):
    """C = alpha op(A) op(B) + beta C on `stream`, for `batch` products at once.

    a, b, c: C-contiguous float32 device arrays of any shape (used flat, row-major).
    Not transposed, A is m x k with leading dimension lda (default k); transposed, A is
    stored k x m (default lda m). B likewise: k x n (ldb n), or stored n x k (ldb k).
    C is m x n with leading dimension ldc (default n). Product z starts at
    off_x + z * stride_x in each operand. With beta == 0, C's old contents are not read.
    splits: inner-dimension splits (None: plan_splits when `scratch` is given, else 1);
    scratch(shape) must return a float32 device array of that shape (split-K partials)."""
    m, n, k, batch = int(m), int(n), int(k), int(batch)
    a, b, c = _flat(a), _flat(b), _flat(c)
    if trans_a:
        lda = m if lda is None else int(lda)
        sa_i, sa_k = 1, lda
    else:
        lda = k if lda is None else int(lda)
        sa_i, sa_k = lda, 1
    if trans_b:
        ldb = k if ldb is None else int(ldb)
        sb_k, sb_j = 1, ldb
    else:
        ldb = n if ldb is None else int(ldb)
        sb_k, sb_j = ldb, 1
    ldc = n if ldc is None else int(ldc)
    off_a, off_b, off_c = int(off_a), int(off_b), int(off_c)
    stride_a, stride_b, stride_c = int(stride_a), int(stride_b), int(stride_c)
    _check("A", a, off_a, stride_a, batch, [(m, sa_i), (k, sa_k)])
    _check("B", b, off_b, stride_b, batch, [(k, sb_k), (n, sb_j)])
    _check("C", c, off_c, stride_c, batch, [(m, ldc), (n, 1)])
    if splits is None:
        splits = plan_splits(m, n, k, batch) if scratch is not None else 1
    splits = max(1, min(int(splits), k))
    kchunk = -(-k // splits)
    kchunk = -(-kchunk // TILE_K) * TILE_K          # whole tiles per split
    splits = -(-k // kchunk)                        # no empty split
    grid = (blocks_for(n, TILE_N), blocks_for(m, TILE_M), batch * splits)
    block = (THREADS_X, THREADS_Y)
    alpha32, beta32 = np.float32(alpha), np.float32(beta)
    if splits == 1:
        gemm_kernel[grid, block, stream](m, n, k, kchunk, 1, alpha32,
                                         a, off_a, stride_a, sa_i, sa_k,
                                         b, off_b, stride_b, sb_k, sb_j,
                                         beta32, c, off_c, stride_c, 0, ldc)
        return c
    if scratch is None:
        raise ValueError("gemm: split-K needs a scratch buffer")
    mn = m * n
    ws = _flat(scratch((batch * splits * mn,)))
    gemm_kernel[grid, block, stream](m, n, k, kchunk, splits, alpha32,
                                     a, off_a, stride_a, sa_i, sa_k,
                                     b, off_b, stride_b, sb_k, sb_j,
                                     np.float32(0.0), ws, 0, splits * mn, mn, n)
    splitk_reduce[blocks_for(batch * mn), EBLOCK, stream](ws, splits, m, n, batch, beta32,
                                                          c, off_c, stride_c, ldc)
    return c


# ---- reductions ---------------------------------------------------------------------------
@cuda.jit
def row_sum(src, out):
    """out[r] = sum of src[r, :]: one block per row, strided partial sums, then a
    shared-memory tree (deterministic, no atomics)."""
    buf = cuda.shared.array(RBLOCK, float32)
    r = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    cols = src.shape[1]
    acc = float32(0.0)
    j = tid
    while j < cols:
        acc += src[r, j]
        j += RBLOCK
    buf[tid] = acc
    block_total = block_sum(buf, tid, RBLOCK)
    if tid == 0:
        out[r] = block_total


@cuda.jit
def col_sum(src, out):
    """out[j] = sum of src[:, j]: one thread per column, rows in order (coalesced)."""
    j = cuda.grid(1)
    if j < src.shape[1]:
        acc = float32(0.0)
        for r in range(src.shape[0]):
            acc += src[r, j]
        out[j] = acc


def sum_rows(src, out, stream):
    """out[r] = sum_j src[r, j] (src 2-D, out 1-D, device arrays)."""
    row_sum[src.shape[0], RBLOCK, stream](src, out)


def sum_cols(src, out, stream):
    """out[j] = sum_r src[r, j]."""
    col_sum[blocks_for(src.shape[1]), EBLOCK, stream](src, out)


# Every kernel above, with a concrete signature (tests/test_ptx_conv_fc.py compiles them).
KERNELS = [
    (gemm_kernel, "void(int64, int64, int64, int64, int64, float32, "
                  "float32[::1], int64, int64, int64, int64, "
                  "float32[::1], int64, int64, int64, int64, "
                  "float32, float32[::1], int64, int64, int64, int64)"),
    (splitk_reduce, "void(float32[::1], int64, int64, int64, int64, float32, "
                    "float32[::1], int64, int64, int64)"),
    (row_sum, "void(float32[:, ::1], float32[::1])"),
    (col_sum, "void(float32[:, ::1], float32[::1])"),
]
