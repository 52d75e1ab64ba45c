// Decode attention over a paged KV cache, split-KV (flash-decoding), SPEC's paged-decode clause.
//
// q [B, Hq, Sq, D] holds the last Sq positions of each sequence: query i of sequence b sees keys
// j <= kv_lens[b] - Sq + i. Key j of sequence b is row j % page of page block_table[b, j / page] of
// k_pages, v_pages [num_pages, page, Hk, D] (pages in any order).
//
// decode_split<T, DPL>: grid (num_splits, B*Hk, ceil(GROUP*Sq / 8)), 8 warps; warp w owns query row
// r = 8*blockIdx.z + w of its KV head's group (head hk*GROUP + r / Sq, position r % Sq) and walks the split's
// keys 32 at a time. Lane l holds head dims l, l+32, ... (DPL of them, D <= 32*DPL): a key's score is the
// lanes' partial dot products summed by shuffles; lane j keeps the score of key j of the 32, the warp takes
// their max and sum (base-2 online softmax, exponent base 0 while the max is -inf), and each lane adds
// sum_j p_j v_j over its head dims. The warps of a CTA read the same keys, so K and V come from DRAM once
// per CTA and from L1/L2 for the other rows. Each row writes its split's partial out_s = acc / l_s (float32)
// and lse_s = ln2 (m_s + log2 l_s); a split with no visible key writes out_s = 0, lse_s = -inf.
//
// decode_merge<T>: one warp per row merges the splits with the softmax-statistics algebra (SMX-2):
// M = max_s lse_s, w_s = e^(lse_s - M), out = sum_s w_s out_s / sum_s w_s, lse = M + ln sum_s w_s;
// no visible key at all: out 0, lse -inf.
#include "common.cuh"

template <class T, int DPL>
__global__ void __launch_bounds__(256) decode_split(
    const T* __restrict__ q, const T* __restrict__ kp, const T* __restrict__ vp, const int* __restrict__ table,
    const int* __restrict__ kv_lens, float* __restrict__ out_p, float* __restrict__ lse_p, int Hq, int Hk, int Sq,
    int d, int page, int table_stride, int keys_per_split, i64 q_sb, i64 q_sh, i64 q_ss, i64 k_sp, i64 k_ss,
    i64 k_sh, i64 v_sp, i64 v_ss, i64 v_sh, float scale_log2) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int group = Hq / Hk, split = blockIdx.x, splits = gridDim.x;
    const int b = blockIdx.y / Hk, hk = blockIdx.y % Hk;
    const int r = 8 * blockIdx.z + warp;
    if (r >= group * Sq) return;  // whole warps only: no block-wide synchronisation below
    const int h = hk * group + r / Sq, i = r % Sq;
    const int kv_len = kv_lens[b], last = kv_len - Sq + i;
    const int lo = split * keys_per_split, hi = min(lo + keys_per_split, last + 1);

    float qv[DPL], acc[DPL];
    const T* qrow = q + b * q_sb + h * q_sh + i * q_ss;
#pragma unroll
    for (int e = 0; e < DPL; ++e) {
        const int c = lane + 32 * e;
        qv[e] = c < d ? to_f32(qrow[c]) * scale_log2 : 0.f;
        acc[e] = 0.f;
    }
    float m = -ATTNSPEC_INF, l = 0.f;
    const int* row_table = table + (i64)b * table_stride;
    for (int j0 = lo; j0 < hi; j0 += 32) {
        const int n = min(32, hi - j0);
        float x = -ATTNSPEC_INF;  // lane jj: the base-2 logit of key j0 + jj
        for (int jj = 0; jj < n; ++jj) {
            const int j = j0 + jj;
            const T* krow = kp + row_table[j / page] * k_sp + (j % page) * k_ss + hk * k_sh;
            float part = 0.f;
#pragma unroll
            for (int e = 0; e < DPL; ++e) {
                const int c = lane + 32 * e;
                if (c < d) part += qv[e] * to_f32(krow[c]);
            }
#pragma unroll
            for (int o = 16; o >= 1; o /= 2) part += __shfl_xor_sync(0xffffffffu, part, o);
            if (lane == jj) x = part;
        }
        float mx = x;
#pragma unroll
        for (int o = 16; o >= 1; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        const float m_new = fmaxf(m, mx);
        const float base = m_new == -ATTNSPEC_INF ? 0.f : m_new;
        const float alpha = exp2f(m - base), p = exp2f(x - base);
        float ps = p;
#pragma unroll
        for (int o = 16; o >= 1; o /= 2) ps += __shfl_xor_sync(0xffffffffu, ps, o);
        l = l * alpha + ps;
        m = m_new;
#pragma unroll
        for (int e = 0; e < DPL; ++e) acc[e] *= alpha;
        for (int jj = 0; jj < n; ++jj) {
            const int j = j0 + jj;
            const float pj = __shfl_sync(0xffffffffu, p, jj);
            const T* vrow = vp + row_table[j / page] * v_sp + (j % page) * v_ss + hk * v_sh;
#pragma unroll
            for (int e = 0; e < DPL; ++e) {
                const int c = lane + 32 * e;
                if (c < d) acc[e] += pj * to_f32(vrow[c]);
            }
        }
    }
    const i64 row = (((i64)b * Hq + h) * Sq + i) * splits + split;  // [B, Hq, Sq, splits]
    const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int e = 0; e < DPL; ++e) {
        const int c = lane + 32 * e;
        if (c < d) out_p[row * d + c] = acc[e] * inv;
    }
    if (lane == 0) lse_p[row] = l > 0.f ? (m + log2f(l)) * ATTNSPEC_LN2 : -ATTNSPEC_INF;
}

template <class T>
__global__ void __launch_bounds__(256) decode_merge(const float* __restrict__ out_p, const float* __restrict__ lse_p,
                                                    T* __restrict__ out, float* __restrict__ lse, int Hq, int Sq,
                                                    int d, int splits, i64 o_sb, i64 o_sh, i64 o_ss, i64 rows) {
    const i64 row = (i64)blockIdx.x * 8 + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    float mx = -ATTNSPEC_INF;
    for (int s = lane; s < splits; s += 32) mx = fmaxf(mx, lse_p[row * splits + s]);
#pragma unroll
    for (int o = 16; o >= 1; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    const float base = mx == -ATTNSPEC_INF ? 0.f : mx;
    float total = 0.f;
    for (int s = lane; s < splits; s += 32) total += expf(lse_p[row * splits + s] - base);
#pragma unroll
    for (int o = 16; o >= 1; o /= 2) total += __shfl_xor_sync(0xffffffffu, total, o);
    const float inv = total > 0.f ? 1.f / total : 0.f;
    const i64 b = row / ((i64)Hq * Sq), h = (row / Sq) % Hq, i = row % Sq;
    T* orow = out + b * o_sb + h * o_sh + i * o_ss;
    for (int c = lane; c < d; c += 32) {
        float sum = 0.f;
        for (int s = 0; s < splits; ++s) sum += expf(lse_p[row * splits + s] - base) * out_p[(row * splits + s) * d + c];
        orow[c] = from_f32<T>(sum * inv);
    }
    if (lane == 0) lse[row] = total > 0.f ? base + logf(total) : -ATTNSPEC_INF;
}

#ifdef ATTNSPEC_INSTANTIATE
// Representative instantiations for nvcc checks (Python instantiates on demand).
#define ATTNSPEC_SPLIT_ARGS(T)                                                                                 \
    const T*, const T*, const T*, const int*, const int*, float*, float*, int, int, int, int, int, int, int, \
        i64, i64, i64, i64, i64, i64, i64, i64, i64, float
template __global__ void decode_split<bf16_t, 4>(ATTNSPEC_SPLIT_ARGS(bf16_t));
template __global__ void decode_split<f16_t, 2>(ATTNSPEC_SPLIT_ARGS(f16_t));
template __global__ void decode_split<float, 8>(ATTNSPEC_SPLIT_ARGS(float));
template __global__ void decode_merge<bf16_t>(const float*, const float*, bf16_t*, float*, int, int, int, int, i64,
                                              i64, i64, i64);
template __global__ void decode_merge<float>(const float*, const float*, float*, float*, int, int, int, int, i64,
                                             i64, i64, i64);
#endif
