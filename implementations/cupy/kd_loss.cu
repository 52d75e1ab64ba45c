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
// The kernels work in base 2 (as the attention kernels do): they scale the logits by log2(e) once, so each
// exponential is one exp2f, a single MUFU.EX2 under -ftz, where expf adds a range reduction. The running
// statistics are base-2 (m, l = sum 2^(x - m), a = sum 2^(xt - mt)(xt - xs) in base-2 units, lse2 =
// m + log2 l); natural values are ln 2 times them: lse = ln2 lse2, KL = ln2 (a / l_t - lse2_t + lse2_s).
// kd_scale writes 1 / count; kd_part (one CTA per part of a row, see there) streams its part of s and t,
// meets the row's other parts through global memory, and streams the part again writing ds (the second read
// mostly hits L2); kd_finalize sums the row losses in a fixed order. -inf logits are allowed (masked or
// padded vocabulary): see kd_pack. The only [N, V] buffer is ds itself. KL >= 0 holds exactly; rounding can
// push the computed value a few ulps below 0, so each row's KL is clamped at 0 (KD-3). No float atomics:
// the results are bit-identical on repeat.
#include "common.cuh"

struct KDAcc {
    float ms, ls;     // xs: running max, sum of e^(xs - ms)
    float mt, lt, a;  // xt: running max, sum of e^(xt - mt), sum of e^(xt - mt)(xt - xs)
    float m1, l1;     // s at temperature 1 (cross-entropy), when needed
};

// Add N values of s and t (registers of the caller) to c, as base-2 logits xs = s k2, xt = t k2 (k2 =
// log2(e) / T) and s log2(e). -inf values are allowed: while a running max is still -inf the exponents are
// taken against 0 (so -inf - -inf never occurs), and a teacher term with 2^(xt - m_t) == 0 adds 0 (its
// xt - xs may be -inf or NaN).
template <int N, bool CE>
__device__ __forceinline__ void kd_pack(KDAcc& c, const float (&s)[N], const float (&t)[N], float k2) {
    float xs[N], xt[N], x1[N];
    float ps = -ATTNSPEC_INF, pt = -ATTNSPEC_INF, p1 = -ATTNSPEC_INF;
#pragma unroll
    for (int k = 0; k < N; ++k) {
        xs[k] = __fmul_rn(s[k], k2);  // rounded products, never contracted: kd_grad_value takes the same
        xt[k] = __fmul_rn(t[k], k2);
        ps = fmaxf(ps, xs[k]);
        pt = fmaxf(pt, xt[k]);
        if (CE) {
            x1[k] = __fmul_rn(s[k], ATTNSPEC_LOG2E);
            p1 = fmaxf(p1, x1[k]);
        }
    }
    if (ps > c.ms) {
        c.ls *= exp2f(c.ms - ps);
        c.ms = ps;
    }
    if (pt > c.mt) {
        const float f = exp2f(c.mt - pt);
        c.lt *= f;
        c.a *= f;
        c.mt = pt;
    }
    if (CE && p1 > c.m1) {
        c.l1 *= exp2f(c.m1 - p1);
        c.m1 = p1;
    }
    const float bs = c.ms == -ATTNSPEC_INF ? 0.f : c.ms;
    const float bt = c.mt == -ATTNSPEC_INF ? 0.f : c.mt;
    const float b1 = c.m1 == -ATTNSPEC_INF ? 0.f : c.m1;
#pragma unroll
    for (int k = 0; k < N; ++k) {
        c.ls += exp2f(xs[k] - bs);
        const float e = exp2f(xt[k] - bt);
        c.lt += e;
        c.a += e > 0.f ? e * (xt[k] - xs[k]) : 0.f;
        if (CE) c.l1 += exp2f(x1[k] - b1);
    }
}

__device__ __forceinline__ void kd_merge(KDAcc& c, const KDAcc& o) {
    merge_ml<true>(c.ms, c.ls, o.ms, o.ls);
    const float mt = fmaxf(c.mt, o.mt);
    const float f1 = c.mt == mt ? 1.f : exp2f(c.mt - mt), f2 = o.mt == mt ? 1.f : exp2f(o.mt - mt);
    c.lt = c.lt * f1 + o.lt * f2;
    c.a = c.a * f1 + o.a * f2;
    c.mt = mt;
    merge_ml<true>(c.m1, c.l1, o.m1, o.l1);
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

// Streaming (evict-first) loads and stores, `.cs`: lines read by pass 2 and the ds lines are not used again,
// so L2 evicts them before the lines pass 1 brought in for parts still waiting for their pass 2. Inline PTX
// (no headers; 16-bit types as raw bits). Global addresses: the pointers come from cudaMalloc.
__device__ __forceinline__ vec16 ld_stream(const vec16* p) {
    vec16 v;
    asm("ld.global.cs.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.w[0]), "=r"(v.w[1]), "=r"(v.w[2]), "=r"(v.w[3])
        : "l"(p));
    return v;
}
__device__ __forceinline__ float ld_stream(const float* p) {
    float v;
    asm("ld.global.cs.f32 %0, [%1];" : "=f"(v) : "l"(p));
    return v;
}
template <class H>  // bf16_t, f16_t
__device__ __forceinline__ H ld_stream(const H* p) {
    H v;
    asm("ld.global.cs.b16 %0, [%1];" : "=h"(v.bits) : "l"(p));
    return v;
}
__device__ __forceinline__ void st_stream(vec16* p, const vec16& v) {
    asm volatile("st.global.cs.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.w[0]), "r"(v.w[1]), "r"(v.w[2]),
                 "r"(v.w[3]));
}
__device__ __forceinline__ void st_stream(float* p, float v) {
    asm volatile("st.global.cs.f32 [%0], %1;" ::"l"(p), "f"(v));
}
template <class H>
__device__ __forceinline__ void st_stream(H* p, H v) {
    asm volatile("st.global.cs.b16 [%0], %1;" ::"l"(p), "h"(v.bits));
}

// Pass 1: stream n elements of s and t into c. VEC (sr, tr 16-byte aligned, n a multiple of 16 / sizeof(T)):
// thread x takes 16-byte packs x, x + NT, ..., two packs of s and two of t in flight per step; otherwise
// elements x, x + NT, ...
template <class T, int NT, bool VEC, bool CE>
__device__ __forceinline__ void kd_scan(KDAcc& c, const T* sr, const T* tr, int n, float k2) {
    constexpr int VW = 16 / sizeof(T);
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
                kd_pack<VW, CE>(c, a, b, k2);
            }
        }
        if (j < nv) {
            const vec16 rs = sv[j], rt = tv[j];
            float a[VW], b[VW];
#pragma unroll
            for (int k = 0; k < VW; ++k) {
                a[k] = to_f32(reinterpret_cast<const T*>(&rs)[k]);
                b[k] = to_f32(reinterpret_cast<const T*>(&rt)[k]);
            }
            kd_pack<VW, CE>(c, a, b, k2);
        }
    } else {
        for (int j = threadIdx.x; j < n; j += NT) {
            const float a[1] = {to_f32(sr[j])}, b[1] = {to_f32(tr[j])};
            kd_pack<1, CE>(c, a, b, k2);
        }
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

// A row's base-2 (lse2_s, lse2_t, lse2_1) from its merged accumulator, and its loss (0 unless `use`).
template <class T, bool CE>
__device__ __forceinline__ float kd_row_loss(const KDAcc& c, const T* sr, i64 y, bool use, float alpha, float t2,
                                             float (&lse2)[3]) {
    lse2[0] = c.ms + log2f(c.ls);
    lse2[1] = c.mt + log2f(c.lt);
    lse2[2] = lse2[0];
    // KL_2 = a / l_t - lse2_t + lse2_s, regrouped as a / l_t - (m_t - m_s) - log2(l_t / l_s): lse2 is ~log2 V
    // large and its rounding (an ulp of ~12 at V = 5000) would not cancel, where each regrouped term is
    // near its size in the KL (s = t + c: a / l_t and m_t - m_s both ~c k2, l_t / l_s ~1).
    float loss = alpha * t2 * fmaxf(ATTNSPEC_LN2 * (c.a / c.lt - (c.mt - c.ms) - log2f(c.lt / c.ls)), 0.f);
    if (CE) {
        lse2[2] = c.m1 + log2f(c.l1);
        if (use) loss += (1.f - alpha) * (ATTNSPEC_LN2 * lse2[2] - to_f32(sr[y]));  // y in [0, V) when counted
    }
    return use ? loss : 0.f;
}

// One element of ds: c_kd = alpha T / count, c_ce = (1 - alpha) / count (0 for rows that do
// not count), k2 = log2(e) / T, lse2 = the row's base-2 (lse2_s, lse2_t, lse2_1);
// ds_j = c_kd (2^(s_j k2 - lse2_s) - 2^(t_j k2 - lse2_t)) + c_ce (2^(s_j log2(e) - lse2_1) - [j == y]),
// with the products rounded as kd_pack rounds them (no FMA contraction), so that a row whose softmax is
// one-hot, V = 1 for one, gets 2^0 - 2^0 = 0 exactly (KD-2: ds sums to 0).
template <bool CE>
__device__ __forceinline__ float kd_grad_value(float sv, float tv, bool is_label, float k2, float c_kd,
                                               float c_ce, const float (&lse2)[3]) {
    float gv = c_kd * (exp2f(__fmul_rn(sv, k2) - lse2[0]) - exp2f(__fmul_rn(tv, k2) - lse2[1]));
    if (CE) gv += c_ce * (exp2f(__fmul_rn(sv, ATTNSPEC_LOG2E) - lse2[2]) - (is_label ? 1.f : 0.f));
    return gv;
}

// Pass 2: ds over n elements (sr, tr, dr at the part's first column; y: the label's column counted from
// there, outside [0, n) when the label lies in another part), the CTA's last step of NT packs (VEC, as in
// kd_scan) or NT elements first, since the most recently read lines are the likeliest still in L2; two
// steps in flight; streaming loads and stores.
template <class T, int NT, bool VEC, bool CE>
__device__ __forceinline__ void kd_write_grad(const T* sr, const T* tr, T* dr, int n, i64 y, float k2,
                                              float c_kd, float c_ce, const float (&lse2)[3]) {
    if constexpr (VEC) {
        constexpr int VW = 16 / sizeof(T);
        const int nv = n / VW;
        const vec16* sv = reinterpret_cast<const vec16*>(sr);
        const vec16* tv = reinterpret_cast<const vec16*>(tr);
        vec16* dv = reinterpret_cast<vec16*>(dr);
        auto grad = [&](const vec16& rs, const vec16& rt, int j) {
            vec16 out;
            T* o = reinterpret_cast<T*>(&out);
#pragma unroll
            for (int k = 0; k < VW; ++k)
                o[k] = from_f32<T>(kd_grad_value<CE>(to_f32(reinterpret_cast<const T*>(&rs)[k]),
                                                     to_f32(reinterpret_cast<const T*>(&rt)[k]), j * VW + k == y,
                                                     k2, c_kd, c_ce, lse2));
            st_stream(dv + j, out);
        };
        int j = (nv - 1) / NT * NT + (int)threadIdx.x;  // this thread's pack of the last step
        if (j >= nv) j -= NT;                           // (the last step may be partial)
        for (; j >= NT; j -= 2 * NT) {
            const vec16 rs0 = ld_stream(sv + j), rt0 = ld_stream(tv + j);
            const vec16 rs1 = ld_stream(sv + j - NT), rt1 = ld_stream(tv + j - NT);
            grad(rs0, rt0, j);
            grad(rs1, rt1, j - NT);
        }
        if (j >= 0) grad(ld_stream(sv + j), ld_stream(tv + j), j);
    } else {
        auto grad = [&](int j) {
            st_stream(dr + j, from_f32<T>(kd_grad_value<CE>(to_f32(ld_stream(sr + j)), to_f32(ld_stream(tr + j)),
                                                            j == y, k2, c_kd, c_ce, lse2)));
        };
        int j = (n - 1) / NT * NT + (int)threadIdx.x;
        if (j >= n) j -= NT;
        for (; j >= NT; j -= 2 * NT) {
            grad(j);
            grad(j - NT);
        }
        if (j >= 0) grad(j);
    }
}

// Sum of v over the 1024 threads of a CTA in a fixed order: shfl_down within each warp, then warp 0 the same
// way over the 32 warp sums. The total is in thread 0 (the other threads hold partial sums).
template <class V>
__device__ __forceinline__ V cta1024_sum(V v) {
    __shared__ V part[32];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
    __syncthreads();
    v = part[threadIdx.x % 32];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
    return v;
}

// Before kd_part (one CTA of 1024): scale[0] = 1 / (number of rows whose label is not ignore_index; all n
// rows without labels), 0 when none counts. Integer counts: deterministic.
__global__ void __launch_bounds__(1024) kd_scale(const i64* __restrict__ labels, i64 n, int ignore_index,
                                                 float* __restrict__ scale) {
    long long cnt = 0;
    for (i64 i = threadIdx.x; i < n; i += 1024) cnt += labels ? (labels[i] != ignore_index ? 1 : 0) : 1;
    cnt = cta1024_sum(cnt);
    if (threadIdx.x == 0) scale[0] = cnt > 0 ? 1.f / (float)cnt : 0.f;
}

__device__ __forceinline__ int ld_acquire_gpu(const int* p) {
    int v;
    asm volatile("ld.acquire.gpu.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// One part of one row per CTA: grid x = N * parts; part p owns columns [p cols, min((p + 1) cols, V)), cols a
// multiple of 64 (VEC: V too a multiple of 16 / sizeof(T), rows 16-byte aligned), parts = ceil(V / cols) <=
// the number of SMs. sync: 1 + N int32 zeros; partial: N * parts * 8 floats (scratch; unused when parts = 1);
// scale[0] = 1 / count from kd_scale.
// Work by ticket: thread 0 takes ticket = atomicAdd(&sync[0], 1) when the CTA starts; row = ticket / parts,
// part = ticket % parts. So when a CTA waits for its row, every part with a smaller ticket has started (and
// does not leave before publishing), and the row's missing parts take the next tickets: if the CTAs resident
// at once can hold `parts` CTAs (one per SM suffices), a slot is free for them, so the wait ends (the CTAs
// that hold slots and wait all belong to the lowest waiting row, whose missing parts are next in line).
// Pass 1 streams the part into a KDAcc (kd_scan), the CTA merges its threads (kd_block_reduce), thread 0
// publishes the part's KDAcc in partial[row][part] (__threadfence, then atomicAdd on sync[1 + row]); warp 0
// waits (ld.acquire.gpu) until all parts have published, lane l merges parts l, l + 32, ... in order, then a
// fixed xor-shuffle tree: lane 0 holds the row's statistics, bit-identical in every CTA of the row and on
// every run. Part 0 writes row_loss. Pass 2 streams the part again, last step first, and writes ds
// (kd_write_grad). HBM traffic: s and t about once when the part (cols x 2 sizeof(T) bytes) is still in L2
// at pass 2, ds once, plus 32 bytes per part of statistics.
template <class T, int NT, bool VEC, bool CE>
__global__ void __launch_bounds__(NT)
    kd_part(const T* __restrict__ s, const T* __restrict__ t, i64 s_stride, i64 t_stride, int V, int cols,
            int parts, const i64* __restrict__ labels, int ignore_index, float inv_t, float alpha, float t2,
            const float* __restrict__ scale, int* sync, float* partial, float* __restrict__ row_loss,
            T* __restrict__ ds) {
    __shared__ int cta_ticket;
    __shared__ float row_lse2[3];
    if (threadIdx.x == 0) cta_ticket = atomicAdd(&sync[0], 1);
    __syncthreads();
    const int ticket = cta_ticket;
    const i64 r = ticket / parts;
    const int part = ticket % parts;
    const int lo = part * cols;
    const int n = min(cols, V - lo);
    const T* sr = s + r * s_stride;
    const T* tr = t + r * t_stride;
    const i64 y = labels ? labels[r] : -1;
    const bool use = !labels || y != ignore_index;

    KDAcc c = {-ATTNSPEC_INF, 0.f, -ATTNSPEC_INF, 0.f, 0.f, -ATTNSPEC_INF, 0.f};
    const float k2 = inv_t * ATTNSPEC_LOG2E;
    kd_scan<T, NT, VEC, CE>(c, sr + lo, tr + lo, n, k2);
    kd_block_reduce<NT>(c);

    if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        if (parts > 1) {
            float4* rp = reinterpret_cast<float4*>(partial + (r * parts) * 8);
            int* arrived = &sync[1 + r];
            if (lane == 0) {
                rp[2 * part] = make_float4(c.ms, c.ls, c.mt, c.lt);
                rp[2 * part + 1] = make_float4(c.a, c.m1, c.l1, 0.f);
                __threadfence();  // the partial before the arrival
                atomicAdd(arrived, 1);
            }
            while (ld_acquire_gpu(arrived) < parts) __nanosleep(32);
            c = {-ATTNSPEC_INF, 0.f, -ATTNSPEC_INF, 0.f, 0.f, -ATTNSPEC_INF, 0.f};
            for (int q = lane; q < parts; q += 32) {
                const float4 a = __ldcg(rp + 2 * q), b = __ldcg(rp + 2 * q + 1);
                kd_merge(c, KDAcc{a.x, a.y, a.z, a.w, b.x, b.y, b.z});
            }
#pragma unroll
            for (int off = 16; off > 0; off /= 2) kd_merge(c, kd_shfl(c, off));
        }
        if (lane == 0) {
            float lse2[3];
            const float loss = kd_row_loss<T, CE>(c, sr, y, use, alpha, t2, lse2);
            row_lse2[0] = lse2[0];
            row_lse2[1] = lse2[1];
            row_lse2[2] = lse2[2];
            if (part == 0) row_loss[r] = loss;
        }
    }
    __syncthreads();  // row_lse2

    const float inv_n = use ? scale[0] : 0.f;
    const float lse2[3] = {row_lse2[0], row_lse2[1], row_lse2[2]};
    kd_write_grad<T, NT, VEC, CE>(sr + lo, tr + lo, ds + r * V + lo, n, CE ? y - lo : -1, k2,
                                  alpha / inv_t * inv_n, (1.f - alpha) * inv_n, lse2);
}

// After kd_part (one CTA of 1024): loss = (sum of row_loss) x scale[0]. Each thread sums rows tid, tid + 1024,
// ... in order, then a fixed tree: the result is deterministic.
__global__ void __launch_bounds__(1024) kd_finalize(const float* __restrict__ row_loss, i64 n,
                                                    const float* __restrict__ scale, float* __restrict__ loss) {
    float sum = 0.f;
    for (i64 i = threadIdx.x; i < n; i += 1024) sum += row_loss[i];
    sum = cta1024_sum(sum);
    if (threadIdx.x == 0) loss[0] = sum * scale[0];
}

#ifdef ATTNSPEC_INSTANTIATE
#define ATTNSPEC_KD_PART_ARGS(T)                                                                               \
    const T*, const T*, i64, i64, int, int, int, const i64*, int, float, float, float, const float*, int*, float*, \
        float*, T*
template __global__ void kd_part<float, 256, true, false>(ATTNSPEC_KD_PART_ARGS(float));
template __global__ void kd_part<float, 256, true, true>(ATTNSPEC_KD_PART_ARGS(float));
template __global__ void kd_part<float, 128, true, false>(ATTNSPEC_KD_PART_ARGS(float));
template __global__ void kd_part<float, 256, false, true>(ATTNSPEC_KD_PART_ARGS(float));
template __global__ void kd_part<bf16_t, 256, true, true>(ATTNSPEC_KD_PART_ARGS(bf16_t));
template __global__ void kd_part<bf16_t, 256, false, true>(ATTNSPEC_KD_PART_ARGS(bf16_t));
template __global__ void kd_part<f16_t, 256, true, false>(ATTNSPEC_KD_PART_ARGS(f16_t));
#endif
