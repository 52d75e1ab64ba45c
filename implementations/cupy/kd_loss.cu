// Fused knowledge-distillation loss, forward and gradient (KD-1, KD-2, KD-7).
//
// Per row with student logits s, teacher logits t, temperature T, xs = s / T, xt = t / T:
//   lse_s = logsumexp(xs), lse_t = logsumexp(xt), p_s = e^(xs - lse_s), p_t = e^(xt - lse_t)
//   KL(p_t || p_s) = sum_j p_t,j (xt_j - xs_j) - lse_t + lse_s
//   CE(s, y)       = logsumexp(s) - s_y
//   row loss       = alpha T^2 KL + (1 - alpha) CE           (rows with y == ignore_index: 0, not counted)
//   loss           = sum of row losses / number of counted rows (0 when none counts)
//   ds_j           = [alpha T (p_s,j - p_t,j) + (1 - alpha)(softmax(s)_j - [j == y])] / count
// Online logsumexps: for xt the accumulator also carries a = sum_j e^(xt_j - m_t)(xt_j - xs_j), rescaled
// like l_t, so sum_j p_t,j (xt_j - xs_j) = a / l_t.
// One pass (V <= number of SMs * 256 * 32): kd_scale counts the rows and writes 1 / count; kd_fused_split
// reads each row once into registers, split over `parts` independent CTAs that exchange their partial
// statistics through global memory (work assigned by tickets in start order, so waiting is deadlock-free),
// and writes ds from the registers; kd_finalize sums the row losses in a fixed order.
// Two passes (any V): kd_row_stats streams each row once; kd_finalize sums the row losses and writes
// 1 / count; kd_grad streams the row again and writes ds.
// The only [N, V] buffer is ds itself. KL >= 0 holds exactly; rounding can push the computed value a
// few ulps below 0, so each row's KL is clamped at 0 (KD-3).
#include "common.cuh"

struct KDAcc {
    float ms, ls;     // xs: running max, sum of e^(xs - ms)
    float mt, lt, a;  // xt: running max, sum of e^(xt - mt), sum of e^(xt - mt)(xt - xs)
    float m1, l1;     // s at temperature 1 (cross-entropy), when needed
};

// Add N values of s and t (registers of the caller) to c. -inf values are allowed: while a running max
// is still -inf the exponents are taken against 0 (so -inf - -inf never occurs), and a teacher term
// with e^(xt - m_t) == 0 adds 0 (its xt - xs may be -inf or NaN).
template <int N, bool CE>
__device__ __forceinline__ void kd_pack(KDAcc& c, const float* s, const float* t, float inv_t) {
    float xs[N], xt[N];
    float ps = -ATTNSPEC_INF, pt = -ATTNSPEC_INF, p1 = -ATTNSPEC_INF;
#pragma unroll
    for (int k = 0; k < N; ++k) {
        xs[k] = s[k] * inv_t;
        xt[k] = t[k] * inv_t;
        ps = fmaxf(ps, xs[k]);
        pt = fmaxf(pt, xt[k]);
        p1 = fmaxf(p1, s[k]);
    }
    if (ps > c.ms) {
        c.ls *= expf(c.ms - ps);
        c.ms = ps;
    }
    if (pt > c.mt) {
        const float f = expf(c.mt - pt);
        c.lt *= f;
        c.a *= f;
        c.mt = pt;
    }
    if (CE && p1 > c.m1) {
        c.l1 *= expf(c.m1 - p1);
        c.m1 = p1;
    }
    const float bs = c.ms == -ATTNSPEC_INF ? 0.f : c.ms;
    const float bt = c.mt == -ATTNSPEC_INF ? 0.f : c.mt;
    const float b1 = c.m1 == -ATTNSPEC_INF ? 0.f : c.m1;
#pragma unroll
    for (int k = 0; k < N; ++k) {
        c.ls += expf(xs[k] - bs);
        const float e = expf(xt[k] - bt);
        c.lt += e;
        c.a += e > 0.f ? e * (xt[k] - xs[k]) : 0.f;
        if (CE) c.l1 += expf(s[k] - b1);
    }
}

__device__ __forceinline__ void kd_merge(KDAcc& c, const KDAcc& o) {
    merge_ml(c.ms, c.ls, o.ms, o.ls);
    const float mt = fmaxf(c.mt, o.mt);
    const float f1 = c.mt == mt ? 1.f : expf(c.mt - mt), f2 = o.mt == mt ? 1.f : expf(o.mt - mt);
    c.lt = c.lt * f1 + o.lt * f2;
    c.a = c.a * f1 + o.a * f2;
    c.mt = mt;
    merge_ml(c.m1, c.l1, o.m1, o.l1);
}

__device__ __forceinline__ KDAcc kd_shfl(const KDAcc& c, int off) {
    KDAcc o;
    o.ms = __shfl_xor_sync(0xffffffffu, c.ms, off);
    o.ls = __shfl_xor_sync(0xffffffffu, c.ls, off);
    o.mt = __shfl_xor_sync(0xffffffffu, c.mt, off);
    o.lt = __shfl_xor_sync(0xffffffffu, c.lt, off);
    o.a = __shfl_xor_sync(0xffffffffu, c.a, off);
    o.m1 = __shfl_xor_sync(0xffffffffu, c.m1, off);
    o.l1 = __shfl_xor_sync(0xffffffffu, c.l1, off);
    return o;
}

// Stream a row's n elements of s and t into c; thread j takes 16-byte packs j, j + NT, ... (VEC: sr, tr
// 16-byte aligned), then the tail elements.
template <class T, int NT, bool VEC, bool CE>
__device__ __forceinline__ void kd_scan(KDAcc& c, const T* sr, const T* tr, int n, float inv_t) {
    constexpr int VW = 16 / sizeof(T);
    int done = 0;
    if constexpr (VEC) {
        const int nv = n / VW;
        const vec16* sv = reinterpret_cast<const vec16*>(sr);
        const vec16* tv = reinterpret_cast<const vec16*>(tr);
        int j = threadIdx.x;
        for (; j + NT < nv; j += 2 * NT) {
            vec16 rs[2], rt[2];
#pragma unroll
            for (int u = 0; u < 2; ++u) {
                rs[u] = sv[j + u * NT];
                rt[u] = tv[j + u * NT];
            }
#pragma unroll
            for (int u = 0; u < 2; ++u) {
                float a[VW], b[VW];
#pragma unroll
                for (int k = 0; k < VW; ++k) {
                    a[k] = to_f32(reinterpret_cast<const T*>(&rs[u])[k]);
                    b[k] = to_f32(reinterpret_cast<const T*>(&rt[u])[k]);
                }
                kd_pack<VW, CE>(c, a, b, inv_t);
            }
        }
        for (; j < nv; j += NT) {
            const vec16 rs = sv[j], rt = tv[j];
            float a[VW], b[VW];
#pragma unroll
            for (int k = 0; k < VW; ++k) {
                a[k] = to_f32(reinterpret_cast<const T*>(&rs)[k]);
                b[k] = to_f32(reinterpret_cast<const T*>(&rt)[k]);
            }
            kd_pack<VW, CE>(c, a, b, inv_t);
        }
        done = nv * VW;
    }
    for (int j = done + threadIdx.x; j < n; j += NT) {
        const float a[1] = {to_f32(sr[j])}, b[1] = {to_f32(tr[j])};
        kd_pack<1, CE>(c, a, b, inv_t);
    }
}

// Block-wide merge of the threads' accumulators (warp shuffles, then warps in order); valid in thread 0.
template <int NT>
__device__ __forceinline__ void kd_block_reduce(KDAcc& c) {
    __shared__ KDAcc part[NT / 32];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) kd_merge(c, kd_shfl(c, off));
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = c;
    __syncthreads();
    if (threadIdx.x == 0)
        for (int w = 1; w < NT / 32; ++w) kd_merge(c, part[w]);
}

// A row's (lse_s, lse_t, lse_1) from its merged accumulator, and its loss (0 unless `use`).
template <class T, bool CE>
__device__ __forceinline__ float kd_row_loss(const KDAcc& c, const T* sr, i64 y, bool use, float alpha, float t2,
                                             float (&lse)[3]) {
    lse[0] = c.ms + logf(c.ls);
    lse[1] = c.mt + logf(c.lt);
    lse[2] = lse[0];
    float loss = alpha * t2 * fmaxf(c.a / c.lt - lse[1] + lse[0], 0.f);
    if (CE) {
        lse[2] = c.m1 + logf(c.l1);
        if (use) loss += (1.f - alpha) * (lse[2] - to_f32(sr[y]));  // y is in [0, V) for counted rows
    }
    return use ? loss : 0.f;
}

// One element of ds (both forms): c_kd = alpha T / count, c_ce = (1 - alpha) / count (0 for rows that do
// not count), lse = (lse_s, lse_t, lse_1) of the row;
// ds_j = c_kd (e^(xs_j - lse_s) - e^(xt_j - lse_t)) + c_ce (e^(s_j - lse_1) - [j == y]).
template <bool CE>
__device__ __forceinline__ float kd_grad_value(float sv, float tv, bool is_label, float inv_t, float c_kd,
                                               float c_ce, const float (&lse)[3]) {
    float gv = c_kd * (expf(sv * inv_t - lse[0]) - expf(tv * inv_t - lse[1]));
    if (CE) gv += c_ce * (expf(sv - lse[2]) - (is_label ? 1.f : 0.f));
    return gv;
}

// ds over the n elements of a row.
template <class T, int NT, bool VEC, bool CE>
__device__ __forceinline__ void kd_write_grad(const T* sr, const T* tr, T* dr, int n, i64 y, float inv_t,
                                              float c_kd, float c_ce, const float (&lse)[3]) {
    constexpr int VW = 16 / sizeof(T);
    auto grad = [&](float sv, float tv, int j) {
        return kd_grad_value<CE>(sv, tv, j == y, inv_t, c_kd, c_ce, lse);
    };
    int done = 0;
    if constexpr (VEC) {
        const int nv = n / VW;
        const vec16* sv = reinterpret_cast<const vec16*>(sr);
        const vec16* tv = reinterpret_cast<const vec16*>(tr);
        vec16* dv = reinterpret_cast<vec16*>(dr);
        for (int j = threadIdx.x; j < nv; j += NT) {
            const vec16 rs = sv[j], rt = tv[j];
            vec16 out;
            T* o = reinterpret_cast<T*>(&out);
#pragma unroll
            for (int k = 0; k < VW; ++k)
                o[k] = from_f32<T>(grad(to_f32(reinterpret_cast<const T*>(&rs)[k]),
                                        to_f32(reinterpret_cast<const T*>(&rt)[k]), j * VW + k));
            dv[j] = out;
        }
        done = nv * VW;
    }
    for (int j = done + threadIdx.x; j < n; j += NT) dr[j] = from_f32<T>(grad(to_f32(sr[j]), to_f32(tr[j]), j));
}

// Two passes, 1: per-row statistics, one CTA per row. stats[row] = (lse_s, lse_t, lse_1) in units
// of the logits, counted[row] in {0, 1}, row_loss[row] as above. CE: the cross-entropy term is active
// (labels given and alpha < 1).
template <class T, int NT, bool VEC, bool CE>
__global__ void __launch_bounds__(NT) kd_row_stats(const T* __restrict__ s, const T* __restrict__ t, i64 s_stride,
                                                   i64 t_stride, int V, const i64* __restrict__ labels,
                                                   int ignore_index, float inv_t, float alpha, float t2,
                                                   float* __restrict__ stats, int* __restrict__ counted,
                                                   float* __restrict__ row_loss) {
    const i64 r = blockIdx.x;
    const T* sr = s + r * s_stride;
    KDAcc c = {-ATTNSPEC_INF, 0.f, -ATTNSPEC_INF, 0.f, 0.f, -ATTNSPEC_INF, 0.f};
    kd_scan<T, NT, VEC, CE>(c, sr, t + r * t_stride, V, inv_t);
    kd_block_reduce<NT>(c);
    if (threadIdx.x != 0) return;
    const i64 y = labels ? labels[r] : 0;
    const bool use = !labels || y != ignore_index;
    float lse[3];
    row_loss[r] = kd_row_loss<T, CE>(c, sr, y, use, alpha, t2, lse);
    stats[3 * r] = lse[0];
    stats[3 * r + 1] = lse[1];
    stats[3 * r + 2] = lse[2];
    counted[r] = use ? 1 : 0;
}

// Both forms (one CTA of 1024): loss = sum(row_loss) / count and scale[0] = 1 / count (0 when count = 0; the
// one-pass form has already read the same value from kd_scale). Each thread sums rows tid, tid + 1024, ...
// in order, then a fixed tree: the result is deterministic.
__global__ void __launch_bounds__(1024) kd_finalize(const float* __restrict__ row_loss, const int* __restrict__ counted,
                                                    i64 n, float* __restrict__ loss, float* __restrict__ scale) {
    __shared__ float ps[32];
    __shared__ long long pc[32];
    float sum = 0.f;
    long long cnt = 0;
    for (i64 i = threadIdx.x; i < n; i += 1024) {
        sum += row_loss[i];
        cnt += counted[i];
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
        sum += __shfl_down_sync(0xffffffffu, sum, off);
        cnt += __shfl_down_sync(0xffffffffu, cnt, off);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        ps[warp] = sum;
        pc[warp] = cnt;
    }
    __syncthreads();
    if (warp != 0) return;
    sum = ps[lane];
    cnt = pc[lane];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
        sum += __shfl_down_sync(0xffffffffu, sum, off);
        cnt += __shfl_down_sync(0xffffffffu, cnt, off);
    }
    if (lane == 0) {
        loss[0] = cnt > 0 ? sum / (float)cnt : 0.f;
        scale[0] = cnt > 0 ? 1.f / (float)cnt : 0.f;
    }
}

// Two passes, 2: ds for one row per CTA (zeros for rows that do not count).
template <class T, int NT, bool VEC, bool CE>
__global__ void __launch_bounds__(NT) kd_grad(const T* __restrict__ s, const T* __restrict__ t, i64 s_stride,
                                              i64 t_stride, int V, const i64* __restrict__ labels, float inv_t,
                                              float alpha, const float* __restrict__ stats,
                                              const int* __restrict__ counted, const float* __restrict__ scale,
                                              T* __restrict__ ds) {
    const i64 r = blockIdx.x;
    const float inv_n = counted[r] ? scale[0] : 0.f;
    const float lse[3] = {stats[3 * r], stats[3 * r + 1], stats[3 * r + 2]};
    kd_write_grad<T, NT, VEC, CE>(s + r * s_stride, t + r * t_stride, ds + r * V, V, CE ? labels[r] : -1, inv_t,
                                  alpha / inv_t * inv_n, (1.f - alpha) * inv_n, lse);
}

// ---------------------------------------------------------------------------------------------------
// One pass: a row split over independent CTAs that meet through global memory.

// One-pass form, before kd_fused_split (one CTA of 1024): scale[0] = 1 / (number of rows whose label is
// not ignore_index; all n rows without labels), 0 when none counts. Integer counts: deterministic.
__global__ void __launch_bounds__(1024) kd_scale(const i64* __restrict__ labels, i64 n, int ignore_index,
                                                 float* __restrict__ scale) {
    __shared__ long long pc[32];
    long long cnt = 0;
    for (i64 i = threadIdx.x; i < n; i += 1024) cnt += labels ? (labels[i] != ignore_index ? 1 : 0) : 1;
#pragma unroll
    for (int off = 16; off > 0; off /= 2) cnt += __shfl_down_sync(0xffffffffu, cnt, off);
    if (threadIdx.x % 32 == 0) pc[threadIdx.x / 32] = cnt;
    __syncthreads();
    if (threadIdx.x >= 32) return;
    cnt = pc[threadIdx.x];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) cnt += __shfl_down_sync(0xffffffffu, cnt, off);
    if (threadIdx.x == 0) scale[0] = cnt > 0 ? 1.f / (float)cnt : 0.f;
}

#define KD_NT 256  // threads per CTA of kd_fused_split

__device__ __forceinline__ int ld_acquire_gpu(const int* p) {
    int v;
    asm volatile("ld.acquire.gpu.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// One row per `parts` CTAs (grid x = N * parts, KD_NT threads), parts = ceil(V / (KD_NT * PER)) <= the
// number of SMs. sync: 1 + N int32 zeros; partial: N * parts * 8 floats (scratch).
// Work by ticket: thread 0 takes ticket = atomicAdd(&sync[0], 1) when the CTA starts; row = ticket / parts,
// part = ticket % parts. So when a CTA waits for its row, every part with a smaller ticket has started (and
// does not leave before publishing), and the parts still missing take the next tickets: as long as `parts`
// CTAs can be resident at once (one per SM suffices), a free slot always exists for them, and the wait ends.
// Part p owns columns [p KD_NT PER, (p + 1) KD_NT PER); thread x holds elements lo + i KD_NT (lo = p KD_NT
// PER + x, i < PER) of s and t in registers (coalesced scalar loads, all issued before any arithmetic;
// columns >= V read as -inf and are never stored). Each thread accumulates its values in slices of
// min(PER, 8) (a slice whose first column is >= V holds only padding and is skipped), the CTA merges its
// threads (kd_block_reduce), and thread 0 publishes the CTA's KDAcc in partial[row][part] (__threadfence,
// then atomicAdd on sync[1 + row]). Warp 0 waits (ld.acquire.gpu) until all parts have published, lane l
// merges parts l, l + 32, ... in order, then a fixed xor-shuffle tree; lane 0's result is the row's
// statistics, bit-identical in every CTA of the row and on every run. Part 0 writes row_loss and counted.
// ds comes from the registers. scale[0] = 1 / count is written by kd_scale beforehand. Global traffic:
// s and t read once, ds written once, plus 32 bytes per CTA of partial statistics.
template <class T, int PER, bool CE>
__global__ void __launch_bounds__(KD_NT)
    kd_fused_split(const T* __restrict__ s, const T* __restrict__ t, i64 s_stride, i64 t_stride, int V, int parts,
                   const i64* __restrict__ labels, int ignore_index, float inv_t, float alpha, float t2,
                   const float* __restrict__ scale, int* sync, float* partial, float* __restrict__ row_loss,
                   int* __restrict__ counted, T* __restrict__ ds) {
    constexpr int SL = PER < 8 ? PER : 8;  // slice length of the accumulation
    static_assert(PER % SL == 0, "PER must be a power of two");
    __shared__ int cta_ticket;
    __shared__ float row_lse[3];
    if (threadIdx.x == 0) cta_ticket = atomicAdd(&sync[0], 1);
    __syncthreads();
    const int ticket = cta_ticket;
    const i64 r = ticket / parts;
    const int part = ticket % parts;
    const int lo = part * (KD_NT * PER) + (int)threadIdx.x;
    const T* sr = s + r * s_stride;
    const T* tr = t + r * t_stride;

    float sv[PER], tv[PER];
#pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int j = lo + i * KD_NT;
        const bool ok = j < V;
        sv[i] = ok ? to_f32(sr[j]) : -ATTNSPEC_INF;
        tv[i] = ok ? to_f32(tr[j]) : -ATTNSPEC_INF;
    }
    const i64 y = labels ? labels[r] : -1;
    const bool use = !labels || y != ignore_index;

    KDAcc c = {-ATTNSPEC_INF, 0.f, -ATTNSPEC_INF, 0.f, 0.f, -ATTNSPEC_INF, 0.f};
#pragma unroll
    for (int q = 0; q < PER / SL; ++q)
        if (lo + q * SL * KD_NT < V) kd_pack<SL, CE>(c, sv + q * SL, tv + q * SL, inv_t);
    kd_block_reduce<KD_NT>(c);

    if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        float4* rp = reinterpret_cast<float4*>(partial + (r * parts) * 8);
        int* arrived = &sync[1 + r];
        if (lane == 0) {
            rp[2 * part] = make_float4(c.ms, c.ls, c.mt, c.lt);
            rp[2 * part + 1] = make_float4(c.a, c.m1, c.l1, 0.f);
            __threadfence();  // the partial before the arrival
            atomicAdd(arrived, 1);
        }
        while (ld_acquire_gpu(arrived) < parts) __nanosleep(32);
        KDAcc row = {-ATTNSPEC_INF, 0.f, -ATTNSPEC_INF, 0.f, 0.f, -ATTNSPEC_INF, 0.f};
        for (int q = lane; q < parts; q += 32) {
            const float4 a = __ldcg(rp + 2 * q), b = __ldcg(rp + 2 * q + 1);
            kd_merge(row, KDAcc{a.x, a.y, a.z, a.w, b.x, b.y, b.z});
        }
#pragma unroll
        for (int off = 16; off > 0; off /= 2) kd_merge(row, kd_shfl(row, off));
        if (lane == 0) {
            float lse[3];
            const float loss = kd_row_loss<T, CE>(row, sr, y, use, alpha, t2, lse);
            row_lse[0] = lse[0];
            row_lse[1] = lse[1];
            row_lse[2] = lse[2];
            if (part == 0) {
                row_loss[r] = loss;
                counted[r] = use ? 1 : 0;
            }
        }
    }
    __syncthreads();  // row_lse

    const float inv_n = use ? scale[0] : 0.f;
    const float c_kd = alpha / inv_t * inv_n, c_ce = (1.f - alpha) * inv_n;
    const float lse[3] = {row_lse[0], row_lse[1], row_lse[2]};
    T* dr = ds + r * V;
#pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int j = lo + i * KD_NT;
        if (j < V) dr[j] = from_f32<T>(kd_grad_value<CE>(sv[i], tv[i], j == y, inv_t, c_kd, c_ce, lse));
    }
}

#ifdef ATTNSPEC_INSTANTIATE
#define ATTNSPEC_KD_STATS_ARGS(T) \
    const T*, const T*, i64, i64, int, const i64*, int, float, float, float, float*, int*, float*
#define ATTNSPEC_KD_GRAD_ARGS(T) \
    const T*, const T*, i64, i64, int, const i64*, float, float, const float*, const int*, const float*, T*
template __global__ void kd_row_stats<float, 512, true, false>(ATTNSPEC_KD_STATS_ARGS(float));
template __global__ void kd_row_stats<bf16_t, 512, false, true>(ATTNSPEC_KD_STATS_ARGS(bf16_t));
template __global__ void kd_grad<float, 512, true, false>(ATTNSPEC_KD_GRAD_ARGS(float));
template __global__ void kd_grad<bf16_t, 512, false, true>(ATTNSPEC_KD_GRAD_ARGS(bf16_t));
#define ATTNSPEC_KD_FUSED_ARGS(T)                                                                            \
    const T*, const T*, i64, i64, int, int, const i64*, int, float, float, float, const float*, int*, float*, \
        float*, int*, T*
template __global__ void kd_fused_split<float, 32, false>(ATTNSPEC_KD_FUSED_ARGS(float));
template __global__ void kd_fused_split<float, 32, true>(ATTNSPEC_KD_FUSED_ARGS(float));
template __global__ void kd_fused_split<float, 16, false>(ATTNSPEC_KD_FUSED_ARGS(float));
template __global__ void kd_fused_split<bf16_t, 32, true>(ATTNSPEC_KD_FUSED_ARGS(bf16_t));
template __global__ void kd_fused_split<bf16_t, 4, true>(ATTNSPEC_KD_FUSED_ARGS(bf16_t));
template __global__ void kd_fused_split<f16_t, 1, false>(ATTNSPEC_KD_FUSED_ARGS(f16_t));
#endif
