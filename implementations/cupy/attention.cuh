// Device code shared by the attention kernels (attention_fwd.cu, attention_bwd.cu): the tensor-core steps
// on 16-wide blocks, the key blocks a row block visits, the double-buffered K/V pipeline and the paired row
// store.
#pragma once
#include "common.cuh"

// c0 += A * B[:, 0:8] and c1 += A * B[:, 8:16], with b the four registers one ldmatrix_x4 (or its .trans)
// loads for a 16-wide block of B.
template <class T>
__device__ __forceinline__ void mma_16816_x2(float (&c0)[4], float (&c1)[4], const u32 (&a)[4], const u32 (&b)[4]) {
    mma_16816<T>(c0, a, b[0], b[1]);
    mma_16816<T>(c1, a, b[2], b[3]);
}

// Two products of one warp's 16 rows over the DP-wide inner dimension: c1 = A1 B1^T and c2 = A2 B2^T, with A1,
// A2 [16][DP] and B1, B2 [N][DP] tiles in shared memory, each given as its lane's ldmatrix_x4 address (the
// A-style or B-style lane offset) of element [0][0].
template <class T, int DP, int N, int LD>
__device__ __forceinline__ void mma_rows_x2(float (&c1)[N / 8][4], float (&c2)[N / 8][4], u32 a1, u32 a2, u32 b1,
                                            u32 b2) {
#pragma unroll
    for (int nt = 0; nt < N / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) c1[nt][e] = c2[nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk) {
        u32 a1f[4], a2f[4];
        ldmatrix_x4(a1f, a1 + 2 * kk * 16);
        ldmatrix_x4(a2f, a2 + 2 * kk * 16);
#pragma unroll
        for (int np = 0; np < N / 16; ++np) {
            u32 b1f[4], b2f[4];
            ldmatrix_x4(b1f, b1 + 2 * (np * 16 * LD + kk * 16));
            ldmatrix_x4(b2f, b2 + 2 * (np * 16 * LD + kk * 16));
            mma_16816_x2<T>(c1[2 * np], c1[2 * np + 1], a1f, b1f);
            mma_16816_x2<T>(c2[2 * np], c2[2 * np + 1], a2f, b2f);
        }
    }
}

// The f32 accumulators of n-tiles 2c and 2c + 1, rounded to T, are exactly the A fragment of k chunk c.
template <class T>
__device__ __forceinline__ void acc_to_a_fragment(u32 (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
    a[0] = pack2<T>(c0[0], c0[1]);
    a[1] = pack2<T>(c0[2], c0[3]);
    a[2] = pack2<T>(c1[0], c1[1]);
    a[3] = pack2<T>(c1[2], c1[3]);
}

// The key blocks [lo, hi) of BC keys that the query rows [i0, i0 + BR) visit: from the first to the last key
// any of those rows sees through the band.
struct KeyBlocks {
    int lo, hi;
};
__device__ __forceinline__ KeyBlocks key_blocks(const Band& band, int i0, int BR, int BC, int Sq, int Sk) {
    int jb_lo = 0, jb_hi = (Sk + BC - 1) / BC;
    if (band.has_hi) {
        const int last_key = min(i0 + BR - 1, Sq - 1) + band.hi;
        jb_hi = last_key < 0 ? 0 : min(jb_hi, last_key / BC + 1);
    }
    if (band.has_lo) jb_lo = max(i0 + band.lo, 0) / BC;
    return {jb_lo, jb_hi};
}

// Double-buffered K/V pipeline over key blocks [jb_lo, jb_hi), at the top of block jb: start copying block
// jb + 1 (if any) into the other buffer, wait until block jb is in shared memory for every thread, and return
// the buffer (0 or 1) that holds it.
template <class T, int BC, int DP, int LD, int NT, bool VEC>
__device__ __forceinline__ int next_kv_block(T* sK, T* sV, const T* kg, const T* vg, i64 k_ss, i64 v_ss, int jb,
                                             int jb_lo, int jb_hi, int Sk, int d) {
    const int buf = (jb - jb_lo) & 1;
    if (jb + 1 < jb_hi) {
        load_tile<T, BC, DP, LD, NT, VEC>(sK + (buf ^ 1) * BC * LD, kg, k_ss, (jb + 1) * BC, Sk, d);
        load_tile<T, BC, DP, LD, NT, VEC>(sV + (buf ^ 1) * BC * LD, vg, v_ss, (jb + 1) * BC, Sk, d);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    return buf;
}

// row[col], row[col + 1] = x0, x1 rounded to T: one 32-bit store with VEC (d % 8 == 0: col < d covers both),
// otherwise each column below d on its own.
template <class T, bool VEC>
__device__ __forceinline__ void store_pair(T* row, int col, int d, float x0, float x1) {
    if (VEC && col < d) {
        *reinterpret_cast<u32*>(row + col) = pack2<T>(x0, x1);
    } else {
        if (col < d) row[col] = from_f32<T>(x0);
        if (col + 1 < d) row[col + 1] = from_f32<T>(x1);
    }
}
