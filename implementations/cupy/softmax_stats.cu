// Softmax statistics of rows and their merge (online softmax, SMX-1..5).
//
// For a row x: m = max_j x_j (exact), l = sum_j exp(x_j - m). Partial statistics combine with
//   (m1, l1) (+) (m2, l2) = (max(m1, m2), l1 e^(m1 - m) + l2 e^(m2 - m)),   identity (-inf, 0).
// exp is expf (full precision, not the MUFU approximation): the harness compares l against a float32
// evaluation of exp(x - m), and rows of +-1e4 must not lose digits (SMX-5).
#include "common.cuh"

// One pack of N values into a thread's running (m, l): rescale once per pack, then accumulate.
template <int N>
__device__ __forceinline__ void stats_pack(float& m, float& l, const float (&x)[N]) {
    float pm = x[0];
#pragma unroll
    for (int k = 1; k < N; ++k) pm = fmaxf(pm, x[k]);
    if (pm > m) {
        l *= expf(m - pm);  // m = -inf: l is 0 and stays 0
        m = pm;
    }
    if (m == -ATTNSPEC_INF) return;  // every value so far is -inf: nothing to add
#pragma unroll
    for (int k = 0; k < N; ++k) l += expf(x[k] - m);
}

// Block-wide merge of per-thread (m, l); the result is valid in thread 0. NT threads, NT / 32 <= 32.
template <int NT>
__device__ __forceinline__ void block_merge(float& m, float& l) {
    __shared__ float sm[NT / 32], sl[NT / 32];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) merge_ml(m, l, __shfl_xor_sync(0xffffffffu, m, off),
                                                   __shfl_xor_sync(0xffffffffu, l, off));
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        sm[warp] = m;
        sl[warp] = l;
    }
    __syncthreads();
    if (warp == 0) {
        m = lane < NT / 32 ? sm[lane] : -ATTNSPEC_INF;
        l = lane < NT / 32 ? sl[lane] : 0.f;
#pragma unroll
        for (int off = 16; off > 0; off /= 2) merge_ml(m, l, __shfl_xor_sync(0xffffffffu, m, off),
                                                       __shfl_xor_sync(0xffffffffu, l, off));
    }
}

// One CTA per row; each thread runs the online update over 16-byte packs j = tid, tid + NT, ...
// (VEC: row start 16-byte aligned), then the tail elements, then the block merge.
template <class T, int NT, bool VEC>
__global__ void __launch_bounds__(NT) softmax_stats(const T* __restrict__ x, i64 row_stride, int L,
                                                    float* __restrict__ m_out, float* __restrict__ l_out) {
    constexpr int VW = 16 / sizeof(T);
    const T* row = x + blockIdx.x * row_stride;
    float m = -ATTNSPEC_INF, l = 0.f;
    int done = 0;
    if constexpr (VEC) {
        const int nv = L / VW;
        const vec16* rv = reinterpret_cast<const vec16*>(row);
        int c = threadIdx.x;
        for (; c + 3 * NT < nv; c += 4 * NT) {
            vec16 raw[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) raw[u] = rv[c + u * NT];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const T* e = reinterpret_cast<const T*>(&raw[u]);
                float v[VW];
#pragma unroll
                for (int k = 0; k < VW; ++k) v[k] = to_f32(e[k]);
                stats_pack<VW>(m, l, v);
            }
        }
        for (; c < nv; c += NT) {
            const vec16 raw = rv[c];
            const T* e = reinterpret_cast<const T*>(&raw);
            float v[VW];
#pragma unroll
            for (int k = 0; k < VW; ++k) v[k] = to_f32(e[k]);
            stats_pack<VW>(m, l, v);
        }
        done = nv * VW;
    }
    for (int j = done + threadIdx.x; j < L; j += NT) {
        const float v[1] = {to_f32(row[j])};
        stats_pack<1>(m, l, v);
    }
    block_merge<NT>(m, l);
    if (threadIdx.x == 0) {
        m_out[blockIdx.x] = m;
        l_out[blockIdx.x] = l;
    }
}

// The same statistics computed over caller-given blocks of `blk` consecutive elements: warp w takes
// blocks w, w + NT/32, ...; each block gets its exact (max, sum exp(x - max)), merged into the warp's
// running pair in order; the warps' pairs are then merged by the block tree.
template <class T, int NT>
__global__ void __launch_bounds__(NT) softmax_stats_blocked(const T* __restrict__ x, i64 row_stride, int L, int blk,
                                                            float* __restrict__ m_out, float* __restrict__ l_out) {
    const T* row = x + blockIdx.x * row_stride;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int nblk = (L + blk - 1) / blk;
    float m = -ATTNSPEC_INF, l = 0.f;
    for (int c = warp; c < nblk; c += NT / 32) {
        const int lo = c * blk, hi = min(L, lo + blk);
        float cm = -ATTNSPEC_INF;
        for (int j = lo + lane; j < hi; j += 32) cm = fmaxf(cm, to_f32(row[j]));
#pragma unroll
        for (int off = 16; off > 0; off /= 2) cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, off));
        float cl = 0.f;
        if (cm != -ATTNSPEC_INF)
            for (int j = lo + lane; j < hi; j += 32) cl += expf(to_f32(row[j]) - cm);
#pragma unroll
        for (int off = 16; off > 0; off /= 2) cl += __shfl_xor_sync(0xffffffffu, cl, off);
        merge_ml(m, l, cm, cl);
    }
    if (lane != 0) {  // every lane holds the warp's pair; let lane 0 alone carry it into the block merge
        m = -ATTNSPEC_INF;
        l = 0.f;
    }
    block_merge<NT>(m, l);
    if (threadIdx.x == 0) {
        m_out[blockIdx.x] = m;
        l_out[blockIdx.x] = l;
    }
}

// Element-wise merge of two statistics tensors of n elements (computed in float32, stored as T).
template <class T>
__global__ void __launch_bounds__(256) softmax_merge(const T* __restrict__ m1, const T* __restrict__ l1,
                                                     const T* __restrict__ m2, const T* __restrict__ l2,
                                                     T* __restrict__ m_out, T* __restrict__ l_out, i64 n) {
    const i64 i = (i64)blockIdx.x * 256 + threadIdx.x;
    if (i >= n) return;
    float m = to_f32(m1[i]), l = to_f32(l1[i]);
    merge_ml(m, l, to_f32(m2[i]), to_f32(l2[i]));
    m_out[i] = from_f32<T>(m);
    l_out[i] = from_f32<T>(l);
}

#ifdef ATTNSPEC_INSTANTIATE
template __global__ void softmax_stats<float, 512, true>(const float*, i64, int, float*, float*);
template __global__ void softmax_stats<bf16_t, 512, true>(const bf16_t*, i64, int, float*, float*);
template __global__ void softmax_stats<f16_t, 512, false>(const f16_t*, i64, int, float*, float*);
template __global__ void softmax_stats_blocked<float, 256>(const float*, i64, int, int, float*, float*);
template __global__ void softmax_merge<float>(const float*, const float*, const float*, const float*, float*, float*,
                                              i64);
template __global__ void softmax_merge<bf16_t>(const bf16_t*, const bf16_t*, const bf16_t*, const bf16_t*, bf16_t*,
                                               bf16_t*, i64);
#endif
