// Shared device helpers of the attnspec CuPy kernels.
//
// No system headers: the sources compile unchanged with NVRTC (through cupy.RawModule) and with nvcc
// (CI, resource reports). Half-precision values are carried as raw 16-bit patterns and converted with
// PTX `cvt`, so neither cuda_bf16.h nor cuda_fp16.h is needed. The Python side pastes this file in
// place of the `#include "common.cuh"` line, so CuPy's kernel cache sees the full text.
#pragma once

typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

// Storage types: 16 bits of a bfloat16 / float16 value; 16 bytes for vector loads and stores.
struct bf16_t { u16 bits; };
struct f16_t { u16 bits; };
struct alignas(16) vec16 { u32 w[4]; };

#define ATTNSPEC_INF __int_as_float(0x7f800000)
#define ATTNSPEC_LOG2E 1.4426950408889634f
#define ATTNSPEC_LN2 0.6931471805599453f

// ---------------------------------------------------------------------------------------------------
// Conversions. to_f32 widens exactly; from_f32 rounds to nearest even.

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16_t v) { return __uint_as_float(((u32)v.bits) << 16); }
__device__ __forceinline__ float to_f32(f16_t v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
}

template <class T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16_t from_f32<bf16_t>(float x) {
    bf16_t r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
    return r;
}
template <> __device__ __forceinline__ f16_t from_f32<f16_t>(float x) {
    f16_t r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
    return r;
}

// Two floats -> one 32-bit register of two 16-bit values, `lo` in the low half (the lower address /
// lower column of an MMA fragment). PTX cvt.*x2 puts its first source in the upper half.
template <class T> __device__ __forceinline__ u32 pack2(float lo, float hi);
template <> __device__ __forceinline__ u32 pack2<bf16_t>(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
template <> __device__ __forceinline__ u32 pack2<f16_t>(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// ---------------------------------------------------------------------------------------------------
// Tensor-core MMA: D[16x8] (f32) += A[16x16] (row) * B[16x8] (col), bf16 or fp16 operands.
// Fragment layout (lane = 4*g + t): a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..], a[2] = A[g][2t+8..],
// a[3] = A[g+8][2t+8..]; b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g];
// c[0..1] = C[g][2t..2t+1], c[2..3] = C[g+8][2t..2t+1].

template <class T> __device__ __forceinline__ void mma_16816(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1);
// The specialisation for storage type T, whose PTX type is PTX ("bf16" or "f16").
#define ATTNSPEC_MMA_16816(T, PTX)                                                                            \
    template <> __device__ __forceinline__ void mma_16816<T>(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) { \
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." PTX "." PTX ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, " \
                     "{%8,%9}, {%0,%1,%2,%3};\n"                                                               \
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                           \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));                           \
    }
ATTNSPEC_MMA_16816(bf16_t, "bf16")
ATTNSPEC_MMA_16816(f16_t, "f16")
#undef ATTNSPEC_MMA_16816

// ---------------------------------------------------------------------------------------------------
// Shared memory: addresses, ldmatrix, cp.async.

__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, and r[i] receives
// row lane/4, columns 2*(lane%4)..+1 of matrix i (with .trans: column lane/4, rows 2*(lane%4)..+1).
__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// 16-byte global -> shared copy; src_bytes = 0 writes 16 zero bytes and reads nothing.
__device__ __forceinline__ void cp_async_16(u32 dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Copy rows [row0, row0 + ROWS) x columns [0, DP) of a [*, d] matrix with row stride `stride`
// (elements) into shared memory with row stride LD; rows >= nrows and columns >= d are zero-filled.
// VEC: 16-byte cp.async (requires d % 8 == 0, stride % 8 == 0 and a 16-byte aligned base);
// otherwise element by element with ordinary loads and stores. NT threads cooperate.
template <class T, int ROWS, int DP, int LD, int NT, bool VEC>
__device__ __forceinline__ void load_tile(T* sm, const T* g, i64 stride, int row0, int nrows, int d) {
    const int tid = threadIdx.x;
    if constexpr (VEC) {
        constexpr int CPR = DP / 8;  // 16-byte chunks per row
#pragma unroll
        for (int c = tid; c < ROWS * CPR; c += NT) {
            const int r = c / CPR, col = (c % CPR) * 8;
            const bool ok = row0 + r < nrows && col < d;
            const T* src = ok ? g + (i64)(row0 + r) * stride + col : g;
            cp_async_16(smem_addr(sm + r * LD + col), src, ok ? 16 : 0);
        }
    } else {
        for (int c = tid; c < ROWS * DP; c += NT) {
            const int r = c / DP, col = c % DP;
            T val;
            val.bits = 0;
            if (row0 + r < nrows && col < d) val = g[(i64)(row0 + r) * stride + col];
            sm[r * LD + col] = val;
        }
    }
}

// Row-wise (max, sum) merge of online softmax: (m1,l1) (+) (m2,l2) = (m, l1 e^(m1-m) + l2 e^(m2-m)),
// m = max(m1, m2). A term whose max equals m enters unscaled, so (-inf,0) (+) (-inf,0) = (-inf,0).
// BASE2: statistics of base-2 logits (l = sum 2^(x - m)), merged with 2^ in place of e^.
template <bool BASE2 = false>
__device__ __forceinline__ void merge_ml(float& m, float& l, float m2, float l2) {
    const float mn = fmaxf(m, m2);
    const float a = (m == mn) ? l : l * (BASE2 ? exp2f(m - mn) : expf(m - mn));
    const float b = (m2 == mn) ? l2 : l2 * (BASE2 ? exp2f(m2 - mn) : expf(m2 - mn));
    m = mn;
    l = a + b;
}

// The visibility band of one (Sq, Sk) attention: key j is visible to query i iff i + lo <= j (when has_lo)
// and j <= i + hi (when has_hi). causal: 0 none, 1 top-left (j <= i), 2 bottom-right (j <= i + Sk - Sq);
// window (left, right), -1 unbounded: i + Sk - Sq - left <= j <= i + Sk - Sq + right, AND-ed with causal.
struct Band {
    bool has_lo, has_hi;
    int lo, hi;
    __device__ __forceinline__ bool sees(int i, int j) const {
        return (!has_hi || j <= i + hi) && (!has_lo || j >= i + lo);
    }
};

__device__ __forceinline__ Band make_band(int Sq, int Sk, int causal, int win_left, int win_right) {
    const int shift = Sk - Sq;
    Band band;
    band.has_lo = win_left >= 0;
    band.lo = shift - win_left;
    band.has_hi = causal != 0 || win_right >= 0;
    band.hi = causal == 2 ? shift : (causal == 1 ? 0 : shift + win_right);
    if (causal != 0 && win_right >= 0) band.hi = min(band.hi, shift + win_right);
    return band;
}

// Packed variable-length sequences: with prefix sums cu_q, cu_k (not null), sequence b's rows start at q0, k0
// and it has Sq, Sk rows; dense inputs (cu_q null) keep Sq, Sk and start at row 0.
__device__ __forceinline__ void locate_sequence(const int* cu_q, const int* cu_k, int b, i64& q0, i64& k0, int& Sq,
                                                int& Sk) {
    q0 = k0 = 0;
    if (cu_q == nullptr) return;
    q0 = cu_q[b];
    k0 = cu_k[b];
    Sq = cu_q[b + 1] - cu_q[b];
    Sk = cu_k[b + 1] - cu_k[b];
}
