// Decode attention over a paged KV cache, split-KV (flash-decoding), SPEC's paged-decode clauses DEC-1..3.
//
// q [B, Hq, Sq, D] holds the last Sq positions of each sequence: query i of sequence b sees keys
// j <= kv_lens[b] - Sq + i. Key j of sequence b is row j % page of page block_table[b, j / page] of
// k_pages, v_pages [num_pages, page, Hk, D] (pages in any order).
//
// decode_split<T, TPK, ROWS, VEC>: grid (splits * chunks, B * Hk), 128 threads. A CTA owns one KV head hk of
// sequence b, the keys [split * keys_per_split, +keys_per_split) and ROWS query rows of the head's GQA group
// (row r: head hk * GROUP + r / Sq, position r % Sq; chunk c has rows [c * ROWS, +ROWS), the chunks of a split
// are neighbouring CTAs, so a key's bytes come from DRAM once and from L2 for the other chunks). Every thread
// owns 8 consecutive head dims of a key (TPK threads per key: the power of two >= D / 8), so the CTA is
// KG = 128 / TPK key groups. A step covers KG * U keys (U = 4 for 16-bit types, 2 for float32), group g taking
// the U consecutive keys j0 + g U + u, with an online softmax of its own over all ROWS rows (base-2 logits):
// scores by 8-dim partial dot products against the scaled queries in shared memory, summed over the key's TPK
// threads by log2(TPK) xor-shuffles; acc[row][8 dims] += sum_u p_u v_u, rescaled only when a row's maximum
// grows. At the end the groups' (m, l, acc) are merged through shared memory, and each row writes its split's
// partial out_s = acc / l_s (float32) and lse_s = ln2 (m_s + log2 l_s); a row with no visible key in the split
// writes out_s = 0, lse_s = -inf. Keys past kv_len are never read; steps that every row sees whole skip the mask.
//
// What it is built for, the copy rate (what it reaches on the H200, below that: reports/gpu/README.md): the
// key loop has no barrier and no shared-memory traffic but the query reads.
// Each step a thread loads its U keys' 8 dims of K and V as 16-byte loads (ld.global.nc, L1 bypassed: every
// byte is used once), 128 bytes per thread and 16 KB per CTA, issued before the previous step is computed
// (register double buffering), so a CTA keeps 16 KB in flight while it computes. When the page size and the
// split start are multiples of U (runs), a group's U keys share a page: one block-table entry and one address
// per step. ptxas (sm_90, -ftz as CuPy compiles) gives the bf16 D = 128 kernel with 4 rows 168 registers,
// 3 CTAs per SM (__launch_bounds__ asks for 3; 2 with 8 rows): 48 KB (32 KB) per SM in flight, above the
// ~29 KB per SM that the H200's ~4.8 TB/s times a DRAM latency of ~800 ns spread over 132 SMs asks for. The
// unmasked runs step is ~800 SASS instructions per thread (256 FFMA, 64 SHFL + adds, 64 to widen bf16),
// i.e. ~200 issue cycles per warp and 4 KB: the 4 schedulers of an SM can issue for ~20 bytes per clock, above
// the ~18 bytes per clock per SM of the copy rate, but not by much. The work per byte grows with the rows of
// a KV head (8 rows, as in GQA 8 or Sq 8: about twice), so those shapes are issue-bound below the copy rate.
// The host picks enough splits for several waves of CTAs (variant_ops.decode_splits). Without 16-byte
// alignment (VEC false: D % 8 != 0 or strides no multiples of 8) the same loop loads element by element.
//
// decode_merge<T>: one warp per row merges the splits with the softmax-statistics algebra (SMX-2):
// M = max_s lse_s, w_s = e^(lse_s - M), out = sum_s w_s out_s / sum_s w_s, lse = M + ln sum_s w_s;
// no visible key at all: out 0, lse -inf.
#include "common.cuh"

#define DECODE_THREADS 128

// Keys per key group and step: 128 bytes of K and V per thread whatever the element size.
template <class T> struct DecodeUnroll {
    static constexpr int value = 8 / (int)sizeof(T);
};

// 8 consecutive head dims of one key, as raw bits: eight 16-bit values in 4 words, or eight floats.
template <class T> struct Pack8 {
    u32 w[2 * sizeof(T)];
};

__device__ __forceinline__ u32 bits_of(float x) { return __float_as_uint(x); }
__device__ __forceinline__ u32 bits_of(bf16_t x) { return x.bits; }
__device__ __forceinline__ u32 bits_of(f16_t x) { return x.bits; }

// Element e of a pack, widened to float.
template <class T> __device__ __forceinline__ float elem(const Pack8<T>& p, int e) {
    if constexpr (sizeof(T) == 4) {
        return __uint_as_float(p.w[e]);
    } else {
        T x;
        x.bits = (u16)(p.w[e / 2] >> (16 * (e % 2)));
        return to_f32(x);
    }
}

// 16 bytes of read-once data: non-coherent load that does not allocate in L1 (the block table stays there).
__device__ __forceinline__ void load_stream16(u32* w, const void* p) {
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
        : "l"(p));
}

// Dims [col, col + 8) of a key row, zeros for dims >= d and for a key that is not loaded (valid false).
template <class T, bool VEC>
__device__ __forceinline__ void load_pack(Pack8<T>& p, const T* row, int col, int d, bool valid) {
#pragma unroll
    for (int w = 0; w < 2 * (int)sizeof(T); ++w) p.w[w] = 0;
    if (!valid || col >= d) return;
    if constexpr (VEC) {  // d % 8 == 0, 16-byte aligned: the 8 dims are whole
#pragma unroll
        for (int v = 0; v < (int)sizeof(T) / 2; ++v) load_stream16(p.w + 4 * v, row + col + 4 * v);
    } else {
        constexpr int PER_WORD = 4 / sizeof(T);
#pragma unroll
        for (int e = 0; e < 8; ++e)
            if (col + e < d) p.w[e / PER_WORD] |= bits_of(row[col + e]) << (32 / PER_WORD * (e % PER_WORD));
    }
}

// The KV cache as one CTA reads it: k, v point at dim 0 of KV head hk in row 0 of page 0.
template <class T> struct PagedKV {
    const T* k;
    const T* v;
    const int* table;  // the sequence's row of the block table
    int page;
    bool runs;  // page % U == 0 and the split starts at a multiple of U: a group's U keys of a step share a page
    i64 k_sp, k_ss, v_sp, v_ss;
};

// K and V of this thread's keys j, j + 1, ..., j + U - 1 (its key group's share of a step); keys >= end are
// zeros, not read. One block-table entry and one address per step when the keys share a page (kv.runs).
template <class T, bool VEC, int U>
__device__ __forceinline__ void load_step(Pack8<T> (&k)[U], Pack8<T> (&v)[U], const PagedKV<T>& kv, int j, int end,
                                          int col, int d) {
    if (kv.runs) {
        const int in_table = j / kv.page, slot = j - in_table * kv.page;
        const i64 p = j < end ? kv.table[in_table] : 0;
        const T* krow = kv.k + p * kv.k_sp + slot * kv.k_ss;
        const T* vrow = kv.v + p * kv.v_sp + slot * kv.v_ss;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            load_pack<T, VEC>(k[u], krow + u * kv.k_ss, col, d, j + u < end);
            load_pack<T, VEC>(v[u], vrow + u * kv.v_ss, col, d, j + u < end);
        }
    } else {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int in_table = (j + u) / kv.page, slot = j + u - in_table * kv.page;
            const i64 p = j + u < end ? kv.table[in_table] : 0;
            load_pack<T, VEC>(k[u], kv.k + p * kv.k_sp + slot * kv.k_ss, col, d, j + u < end);
            load_pack<T, VEC>(v[u], kv.v + p * kv.v_sp + slot * kv.v_ss, col, d, j + u < end);
        }
    }
}

// One key group's online-softmax state over the chunk's rows (8 head dims of acc per thread); lim[r] is the
// last key row r sees in this split (below the split's first key: none).
template <int ROWS> struct RowState {
    float m[ROWS], l[ROWS], acc[ROWS][8];
    int lim[ROWS];
};

// One step of a key group: keys j, ..., j + U - 1, their K and V in k, v; queries (times scale log2 e) in sq.
// MASK: some key may lie past some row's lim (else every row sees every key of the step).
template <class T, int TPK, int ROWS, int U, bool MASK>
__device__ __forceinline__ void attend_step(RowState<ROWS>& st, const Pack8<T> (&k)[U], const Pack8<T> (&v)[U],
                                            const float (*sq)[TPK * 8], int col, int j) {
    float s[U][ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const float4 q0 = *reinterpret_cast<const float4*>(&sq[r][col]);
        const float4 q1 = *reinterpret_cast<const float4*>(&sq[r][col + 4]);
        const float qv[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
#pragma unroll
        for (int u = 0; u < U; ++u) {
            float part = 0.f;
#pragma unroll
            for (int e = 0; e < 8; ++e) part = fmaf(qv[e], elem(k[u], e), part);
            s[u][r] = part;
        }
    }
#pragma unroll
    for (int o = TPK / 2; o >= 1; o /= 2)
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
            for (int r = 0; r < ROWS; ++r) s[u][r] += __shfl_xor_sync(0xffffffffu, s[u][r], o);
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        float mx = -ATTNSPEC_INF;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (MASK && j + u > st.lim[r]) s[u][r] = -ATTNSPEC_INF;
            mx = fmaxf(mx, s[u][r]);
        }
        if (mx > st.m[r]) {  // a new maximum: rescale (the common case after the first keys skips this)
            const float alpha = exp2f(st.m[r] - mx);
            st.m[r] = mx;
            st.l[r] *= alpha;
#pragma unroll
            for (int e = 0; e < 8; ++e) st.acc[r][e] *= alpha;
        }
        const float base = st.m[r] == -ATTNSPEC_INF ? 0.f : st.m[r];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const float p = exp2f(s[u][r] - base);
            st.l[r] += p;
#pragma unroll
            for (int e = 0; e < 8; ++e) st.acc[r][e] = fmaf(p, elem(v[u], e), st.acc[r][e]);
        }
    }
}

// The split's keys [lo, end) for all key groups, K and V loaded a step ahead; a step is STEP = KG * U keys,
// group g taking keys j0 + g U, ..., j0 + g U + U - 1. Steps below every row's lim (full) skip the mask.
template <class T, int TPK, int ROWS, bool VEC>
__device__ __forceinline__ void walk_split(RowState<ROWS>& st, const PagedKV<T>& kv, const float (*sq)[TPK * 8],
                                           int lo, int end, int full_end, int col, int d) {
    constexpr int KG = DECODE_THREADS / TPK, U = DecodeUnroll<T>::value, STEP = KG * U;
    const int gu = threadIdx.x / TPK * U;
    Pack8<T> k[U], v[U];
    load_step<T, VEC, U>(k, v, kv, lo + gu, end, col, d);
    for (int j0 = lo; j0 < end; j0 += STEP) {
        Pack8<T> k_next[U], v_next[U];
        load_step<T, VEC, U>(k_next, v_next, kv, j0 + STEP + gu, end, col, d);
        if (j0 + STEP <= full_end)
            attend_step<T, TPK, ROWS, U, false>(st, k, v, sq, col, j0 + gu);
        else
            attend_step<T, TPK, ROWS, U, true>(st, k, v, sq, col, j0 + gu);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            k[u] = k_next[u];
            v[u] = v_next[u];
        }
    }
}

// The chunk's rows and where their partials go: chunk row r is row row0 + r of the KV head's group (head
// hk * GROUP + row / Sq, position row % Sq), in [B, Hq, Sq, splits] at partial(r), -1 past the group's rows.
struct ChunkRows {
    int row0, rows, b, hk, Hq, Hk, Sq, split, splits;
    __device__ __forceinline__ i64 partial(int r) const {
        const int row = row0 + r;
        if (row >= rows) return -1;
        return (((i64)b * Hq + hk * (Hq / Hk) + row / Sq) * Sq + row % Sq) * splits + split;
    }
};

// Merges the key groups' states through shared memory and writes the rows' partial out and lse.
template <int TPK, int ROWS>
__device__ __forceinline__ void write_split(const RowState<ROWS>& st, const ChunkRows& rows, float* out_p,
                                            float* lse_p, int col, int d) {
    constexpr int KG = DECODE_THREADS / TPK;
    __shared__ __align__(16) float s_acc[KG][ROWS][TPK * 8];
    __shared__ float s_m[KG][ROWS], s_l[KG][ROWS];
    const int g = threadIdx.x / TPK;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
#pragma unroll
        for (int e = 0; e < 8; ++e) s_acc[g][r][col + e] = st.acc[r][e];
        if (col == 0) s_m[g][r] = st.m[r], s_l[g][r] = st.l[r];
    }
    __syncthreads();
    if (threadIdx.x < ROWS) {  // s_m[g][r] becomes group g's weight in row r: 2^(m_g - M) / L
        const int r = threadIdx.x;
        float mx = -ATTNSPEC_INF, total = 0.f;
        for (int gg = 0; gg < KG; ++gg) mx = fmaxf(mx, s_m[gg][r]);
        const float base = mx == -ATTNSPEC_INF ? 0.f : mx;
        for (int gg = 0; gg < KG; ++gg) total += s_l[gg][r] * exp2f(s_m[gg][r] - base);
        const float inv = total > 0.f ? 1.f / total : 0.f;
        for (int gg = 0; gg < KG; ++gg) s_m[gg][r] = exp2f(s_m[gg][r] - base) * inv;
        const i64 at = rows.partial(r);
        if (at >= 0) lse_p[at] = total > 0.f ? (base + log2f(total)) * ATTNSPEC_LN2 : -ATTNSPEC_INF;
    }
    __syncthreads();
    for (int x = threadIdx.x; x < ROWS * d; x += DECODE_THREADS) {
        const int r = x / d, c = x % d;
        float o = 0.f;
        for (int gg = 0; gg < KG; ++gg) o = fmaf(s_m[gg][r], s_acc[gg][r][c], o);
        const i64 at = rows.partial(r);
        if (at >= 0) out_p[at * d + c] = o;
    }
}

template <class T, int TPK, int ROWS, bool VEC>
__global__ void __launch_bounds__(DECODE_THREADS, ROWS >= 8 ? 2 : 3) decode_split(
    const T* __restrict__ q, const T* __restrict__ kp, const T* __restrict__ vp, const int* __restrict__ table,
    const int* __restrict__ kv_lens, float* __restrict__ out_p, float* __restrict__ lse_p, int Hq, int Hk, int Sq,
    int d, int page, int table_stride, int keys_per_split, i64 q_sb, i64 q_sh, i64 q_ss, i64 k_sp, i64 k_ss,
    i64 k_sh, i64 v_sp, i64 v_ss, i64 v_sh, float scale_log2) {
    __shared__ __align__(16) float sq[ROWS][TPK * 8];  // the chunk's queries times scale log2 e, zero-padded
    const int group_rows = Hq / Hk * Sq, chunks = (group_rows + ROWS - 1) / ROWS;
    const int split = blockIdx.x / chunks, lo = split * keys_per_split, b = blockIdx.y / Hk;
    const ChunkRows rows{(int)blockIdx.x % chunks * ROWS, group_rows, b, (int)blockIdx.y % Hk, Hq, Hk, Sq, split,
                         (int)gridDim.x / chunks};
    const int kv_len = kv_lens[b], col = threadIdx.x % TPK * 8;
    RowState<ROWS> st;
    int end = lo, full_end = lo + keys_per_split;  // keys [lo, end) are loaded, [lo, full_end) seen by every row
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const int i = (rows.row0 + r) % Sq;
        st.lim[r] = min(kv_len - Sq + i, lo + keys_per_split - 1);
        if (rows.partial(r) >= 0) end = max(end, st.lim[r] + 1), full_end = min(full_end, st.lim[r] + 1);
        st.m[r] = -ATTNSPEC_INF;
        st.l[r] = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) st.acc[r][e] = 0.f;
    }
    for (int x = threadIdx.x; x < ROWS * TPK * 8; x += DECODE_THREADS) {
        const int r = x / (TPK * 8), c = x % (TPK * 8), row = rows.row0 + r;
        const T* qrow = q + b * q_sb + (rows.hk * (Hq / Hk) + row / Sq) * q_sh + (row % Sq) * q_ss;
        sq[r][c] = row < group_rows && c < d ? to_f32(qrow[c]) * scale_log2 : 0.f;
    }
    __syncthreads();
    const bool runs = page % DecodeUnroll<T>::value == 0 && lo % DecodeUnroll<T>::value == 0;
    const PagedKV<T> kv{kp + rows.hk * k_sh, vp + rows.hk * v_sh, table + (i64)b * table_stride, page, runs,
                        k_sp, k_ss, v_sp, v_ss};
    walk_split<T, TPK, ROWS, VEC>(st, kv, sq, lo, end, full_end, col, d);
    write_split<TPK, ROWS>(st, rows, out_p, lse_p, col, d);
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
// Representative instantiations for nvcc checks (Python instantiates on demand): the benchmark's bf16 D = 128
// GQA-4 case, fp16 D = 64 with 8-row chunks (Sq = 16 or GQA 8), float32 D = 256, one row, and the element-load
// path for a D that is no multiple of 8.
#define ATTNSPEC_SPLIT_ARGS(T)                                                                                 \
    const T*, const T*, const T*, const int*, const int*, float*, float*, int, int, int, int, int, int, int, \
        i64, i64, i64, i64, i64, i64, i64, i64, i64, float
template __global__ void decode_split<bf16_t, 16, 4, true>(ATTNSPEC_SPLIT_ARGS(bf16_t));
template __global__ void decode_split<f16_t, 8, 8, true>(ATTNSPEC_SPLIT_ARGS(f16_t));
template __global__ void decode_split<float, 32, 1, true>(ATTNSPEC_SPLIT_ARGS(float));
template __global__ void decode_split<bf16_t, 16, 8, false>(ATTNSPEC_SPLIT_ARGS(bf16_t));
template __global__ void decode_split<float, 2, 2, false>(ATTNSPEC_SPLIT_ARGS(float));
template __global__ void decode_merge<bf16_t>(const float*, const float*, bf16_t*, float*, int, int, int, int, i64,
                                              i64, i64, i64);
template __global__ void decode_merge<float>(const float*, const float*, float*, float*, int, int, int, int, i64,
                                             i64, i64, i64);
#endif
