// Float32 sum with a declared combine order (SPEC WD-1..3); schedule_builder.py writes the same order
// down as an implementations.schedule.Schedule, and the result is bit-identical to evaluating it.
//
// One launch of G CTAs of NT threads over n inputs, P = G * NT threads, nvalid = min(n, P):
//   1. thread p (< nvalid) sums x[p], x[p + P], x[p + 2P], ... sequentially, left to right;
//   2. warp tree, shfl_down halving: for o = 16, 8, 4, 2, 1, lane l < o adds lane l + o's value when
//      thread p + o < nvalid (a thread with no input contributes no addition, not a +0);
//   3. CTA tree over the NT/32 warp results (held by lane 0 of each warp), halving the same way:
//      for o = NT/64, ..., 1, warp w < o adds warp w + o when its first thread is < nvalid;
//   4. CTA g writes its sum to out[g].
// The host launches this once over x (G > 1 CTAs) and once more with G = 1 over the G partial sums.
// Additions are `add.rn.f32` in inline PTX: never contracted, reassociated, or flushed to zero (CuPy
// compiles with -ftz=true, which would flush subnormal sums that numpy keeps).
#include "common.cuh"

__device__ __forceinline__ float add_rn(float a, float b) {
    float r;
    asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

template <int NT>
__global__ void __launch_bounds__(NT) reduce_sum_f32(const float* __restrict__ x, i64 n, float* __restrict__ out) {
    static_assert(NT % 32 == 0 && NT <= 1024 && (NT & (NT - 1)) == 0, "NT must be a power of two <= 1024");
    const i64 P = (i64)gridDim.x * NT;
    const i64 nvalid = n < P ? n : P;
    const i64 p = (i64)blockIdx.x * NT + threadIdx.x;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;

    // 1. Sequential strided sum (eight loads in flight, additions still in index order).
    float acc = 0.f;
    if (p < nvalid) {
        acc = x[p];
        i64 i = p + P;
        for (; i + 7 * P < n; i += 8 * P) {
            float v[8];
#pragma unroll
            for (int u = 0; u < 8; ++u) v[u] = x[i + u * P];
#pragma unroll
            for (int u = 0; u < 8; ++u) acc = add_rn(acc, v[u]);
        }
        for (; i < n; i += P) acc = add_rn(acc, x[i]);
    }

    // 2. Warp tree.
#pragma unroll
    for (int o = 16; o > 0; o /= 2) {
        const float other = __shfl_down_sync(0xffffffffu, acc, o);
        if (lane < o && p + o < nvalid) acc = add_rn(acc, other);
    }

    // 3. CTA tree over warp results.
    __shared__ float part[NT / 32];
    if (lane == 0) part[warp] = acc;
    __syncthreads();
    if (warp != 0) return;
    const i64 base = (i64)blockIdx.x * NT;
    float v = lane < NT / 32 ? part[lane] : 0.f;
#pragma unroll
    for (int o = NT / 64; o > 0; o /= 2) {
        const float other = __shfl_down_sync(0xffffffffu, v, o);
        if (lane < o && base + 32 * (lane + o) < nvalid) v = add_rn(v, other);
    }
    if (lane == 0) out[blockIdx.x] = v;
}

#ifdef ATTNSPEC_INSTANTIATE
template __global__ void reduce_sum_f32<512>(const float*, i64, float*);
#endif
