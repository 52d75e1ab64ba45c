// Fused knowledge-distillation loss, forward and gradient (KD-1, KD-2, KD-7).
//
// Per row with student logits s, teacher logits t, temperature T, xs = s / T, xt = t / T:
//   lse_s = logsumexp(xs), lse_t = logsumexp(xt), p_s = e^(xs - lse_s), p_t = e^(xt - lse_t)
//   KL(p_t || p_s) = sum_j p_t,j (xt_j - xs_j) - lse_t + lse_s
//   CE(s, y)       = logsumexp(s) - s_y
//   row loss       = alpha T^2 KL + (1 - alpha) CE           (rows with y == ignore_index: 0, not counted)
//   loss           = sum of row losses / number of counted rows (0 when none counts)
//   ds_j           = [alpha T (p_s,j - p_t,j) + (1 - alpha)(softmax(s)_j - [j == y])] / count
// kd_row_stats streams each row once with online logsumexps (for xt it also carries
// a = sum_j e^(xt_j - m_t)(xt_j - xs_j), rescaled like l_t, so sum_j p_t,j (xt_j - xs_j) = a / l_t);
// kd_finalize sums the row losses in a fixed order; kd_grad streams the row again and writes ds.
// The only [N, V] buffer is ds itself. KL >= 0 holds exactly; rounding can push the computed value a
// few ulps below 0, so each row's KL is clamped at 0 (KD-3).
#include "common.cuh"

struct KDAcc {
    float ms, ls;     // xs: running max, sum of e^(xs - ms)
    float mt, lt, a;  // xt: running max, sum of e^(xt - mt), sum of e^(xt - mt)(xt - xs)
    float m1, l1;     // s at temperature 1 (cross-entropy), when needed
};

template <int N, bool CE>
__device__ __forceinline__ void kd_pack(KDAcc& c, const float (&s)[N], const float (&t)[N], float inv_t) {
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
#pragma unroll
    for (int k = 0; k < N; ++k) {
        c.ls += expf(xs[k] - c.ms);
        const float e = expf(xt[k] - c.mt);
        c.lt += e;
        c.a += e * (xt[k] - xs[k]);
        if (CE) c.l1 += expf(s[k] - c.m1);
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

// ds over the n elements of a row:
// ds_j = c_kd (e^(xs_j - lse_s) - e^(xt_j - lse_t)) + c_ce (e^(s_j - lse_1) - [j == y]).
template <class T, int NT, bool VEC, bool CE>
__device__ __forceinline__ void kd_write_grad(const T* sr, const T* tr, T* dr, int n, i64 y, float inv_t,
                                              float c_kd, float c_ce, const float (&lse)[3]) {
    constexpr int VW = 16 / sizeof(T);
    auto grad = [&](float sv, float tv, int j) {
        float gv = c_kd * (expf(sv * inv_t - lse[0]) - expf(tv * inv_t - lse[1]));
        if (CE) gv += c_ce * (expf(sv - lse[2]) - (j == y ? 1.f : 0.f));
        return gv;
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

// Pass 1: per-row statistics, one CTA per row. stats[row] = (lse_s, lse_t, lse_1) in units
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

// Pass 2 (one CTA of 1024): loss = sum(row_loss) / count and scale[0] = 1 / count (0 when count = 0).
// Each thread sums rows tid, tid + 1024, ... in order, then a fixed tree: the result is deterministic.
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

// Pass 3: ds for one row per CTA (zeros for rows that do not count).
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

#ifdef ATTNSPEC_INSTANTIATE
#define ATTNSPEC_KD_STATS_ARGS(T) \
    const T*, const T*, i64, i64, int, const i64*, int, float, float, float, float*, int*, float*
#define ATTNSPEC_KD_GRAD_ARGS(T) \
    const T*, const T*, i64, i64, int, const i64*, float, float, const float*, const int*, const float*, T*
template __global__ void kd_row_stats<float, 512, true, false>(ATTNSPEC_KD_STATS_ARGS(float));
template __global__ void kd_row_stats<bf16_t, 512, false, true>(ATTNSPEC_KD_STATS_ARGS(bf16_t));
template __global__ void kd_grad<float, 512, true, false>(ATTNSPEC_KD_GRAD_ARGS(float));
template __global__ void kd_grad<bf16_t, 512, false, true>(ATTNSPEC_KD_GRAD_ARGS(bf16_t));
#endif
