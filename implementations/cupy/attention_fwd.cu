// Exact attention forward with log-sum-exp: out = softmax(scale * Q K^T + mask) V, lse = logsumexp rows.
//
// One CTA of 4 warps owns BR = 64*MT query rows of one (batch, query head); warp w owns rows
// [16*MT*w, 16*MT*(w+1)). Key/value blocks of BC rows stream through a double-buffered shared-memory
// pipeline (cp.async), and each block is processed with the online softmax (Milakov & Gimelshein 2018;
// FlashAttention-2's loop order):
//   x_ij  = scale * log2(e) * q_i . k_j          (-inf where masked)
//   m_i'  = max(m_i, max_j x_ij)                 (base-2 logits, so exp2 is a single MUFU op)
//   p_ij  = 2^(x_ij - m_i'),   alpha = 2^(m_i - m_i')
//   l_i   = alpha * l_i + sum_j p_ij,   o_i = alpha * o_i + sum_j p_ij v_j
// and at the end out_i = o_i / l_i, lse_i = ln(2) * (m_i + log2 l_i). A row that sees no key keeps
// m = -inf, l = 0 and gets out = 0, lse = -inf (the exponent base is taken as 0 while m = -inf so that
// no -inf - -inf appears).
//
// Both matrix products run on tensor cores (mma.sync m16n8k16, f32 accumulation); Q and K fragments
// come from ldmatrix, V fragments from ldmatrix.trans, and P is re-packed from the S accumulators
// straight into A fragments (registers only). Shared tiles have a row stride of DP + 8 elements, which
// makes the eight 16-byte rows of every ldmatrix phase fall into distinct banks.
//
// Masking: key j is visible to query i iff j < Sk and i + band.lo <= j <= i + band.hi (each bound where
// present, `make_band`): causal 1 (top-left, j <= i) or 2 (bottom-right, j <= i + Sk - Sq), and the sliding
// window (left, right), -1 unbounded: i + Sk - Sq - left <= j <= i + Sk - Sq + right. Key blocks outside
// the band are never loaded. Varlen (cu_q != nullptr): blockIdx.y's batch index is a sequence whose rows
// start at cu_q[b] / cu_k[b] along the row strides (the batch strides are 0), with its own Sq, Sk and band;
// query blocks past its end return at once. Output and lse are addressed through their strides
// (lse's rows are contiguous). Head dims d <= DP are zero-padded in shared
// memory (zero columns add nothing to q.k and produce columns that are not stored). GQA: query head h
// reads KV head h / (Hq / Hk).
#include "attention.cuh"

template <class T, int DP, int MT, int BC, bool VEC>
__global__ void __launch_bounds__(128) attn_fwd(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ out,
    float* __restrict__ lse, const int* __restrict__ cu_q, const int* __restrict__ cu_k, int Hq, int Hk, int Sq,
    int Sk, int d, i64 q_sb, i64 q_sh, i64 q_ss, i64 k_sb, i64 k_sh, i64 k_ss, i64 v_sb, i64 v_sh, i64 v_ss,
    i64 o_sb, i64 o_sh, i64 o_ss, i64 l_sb, i64 l_sh, float scale_log2, int causal, int win_left, int win_right) {
    constexpr int NW = 4, NT = 32 * NW, BR = 16 * MT * NW, LD = DP + 8;
    constexpr int NTILE = BC / 8, DTILE = DP / 8;
    static_assert(DP % 16 == 0 && BC % 16 == 0, "tile sizes must be multiples of 16");

    extern __shared__ vec16 smem_raw[];  // 16-byte aligned dynamic shared memory
    T* sQ = reinterpret_cast<T*>(smem_raw);
    T* sK = sQ + BR * LD;       // two buffers of BC x LD
    T* sV = sK + 2 * BC * LD;   // two buffers of BC x LD

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int bh = blockIdx.y, b = bh / Hq, h = bh % Hq, hk = h / (Hq / Hk);
    i64 q0, k0;
    locate_sequence(cu_q, cu_k, b, q0, k0, Sq, Sk);
    const Band band = make_band(Sq, Sk, causal, win_left, win_right);
    // Causal grids run the longest row blocks first.
    const int qblock = band.has_hi ? (gridDim.x - 1 - blockIdx.x) : blockIdx.x;
    const int i0 = qblock * BR;
    if (i0 >= Sq) return;  // varlen: a query block past this sequence's end
    const T* qg = q + b * q_sb + h * q_sh + q0 * q_ss;
    const T* kg = k + b * k_sb + hk * k_sh + k0 * k_ss;
    const T* vg = v + b * v_sb + hk * v_sh + k0 * v_ss;

    const auto [jb_lo, jb_hi] = key_blocks(band, i0, BR, BC, Sq, Sk);

    load_tile<T, BR, DP, LD, NT, VEC>(sQ, qg, q_ss, i0, Sq, d);
    if (jb_lo < jb_hi) {
        load_tile<T, BC, DP, LD, NT, VEC>(sK, kg, k_ss, jb_lo * BC, Sk, d);
        load_tile<T, BC, DP, LD, NT, VEC>(sV, vg, v_ss, jb_lo * BC, Sk, d);
    }
    cp_async_commit();

    float acc_o[MT][DTILE][4];
    float m_run[MT][2], l_run[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int dt = 0; dt < DTILE; ++dt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc_o[mt][dt][e] = 0.f;
        m_run[mt][0] = m_run[mt][1] = -ATTNSPEC_INF;
        l_run[mt][0] = l_run[mt][1] = 0.f;
    }

    // ldmatrix lane offsets: A-style (row = lane % 16, col = 8 * (lane / 16)) serves Q and V^T-trans;
    // B-style (row = 8 * (lane / 16) + lane % 8, col = 8 * ((lane / 8) % 2)) serves K.
    // Per-lane shared addresses; the loops below add compile-time byte offsets (2 bytes per element).
    const int a_row = lane % 16, a_col = 8 * (lane / 16);
    const int b_row = 8 * (lane / 16) + lane % 8, b_col = 8 * ((lane / 8) % 2);
    const int wrow0 = warp * 16 * MT;
    const u32 q_lane = smem_addr(sQ) + 2 * ((wrow0 + a_row) * LD + a_col);
    const u32 k_lane = smem_addr(sK) + 2 * (b_row * LD + b_col);
    const u32 v_lane = smem_addr(sV) + 2 * (a_row * LD + a_col);

    for (int jb = jb_lo; jb < jb_hi; ++jb) {
        const int buf = next_kv_block<T, BC, DP, LD, NT, VEC>(sK, sV, kg, vg, k_ss, v_ss, jb, jb_lo, jb_hi, Sk, d);
        const u32 kb = k_lane + 2 * buf * BC * LD;
        const u32 vb = v_lane + 2 * buf * BC * LD;

        // S = Q K^T for this warp's 16*MT rows and BC keys.
        float s[MT][NTILE][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NTILE; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < DP / 16; ++kk) {
            u32 a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
                ldmatrix_x4(a[mt], q_lane + 2 * (mt * 16 * LD + kk * 16));
#pragma unroll
            for (int np = 0; np < BC / 16; ++np) {
                u32 bk[4];
                ldmatrix_x4(bk, kb + 2 * (np * 16 * LD + kk * 16));
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) mma_16816_x2<T>(s[mt][2 * np], s[mt][2 * np + 1], a[mt], bk);
            }
        }

        // Scale to base-2 logits and mask (only blocks that hold a masked pair pay for the test).
        const int j0 = jb * BC;
        const bool need_mask = (j0 + BC > Sk) || (band.has_hi && j0 + BC - 1 > i0 + band.hi) ||
                               (band.has_lo && j0 < i0 + BR - 1 + band.lo);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NTILE; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float x = s[mt][nt][e] * scale_log2;
                    if (need_mask) {
                        const int i = i0 + wrow0 + mt * 16 + g + 8 * (e / 2);
                        const int j = j0 + nt * 8 + 2 * t + (e % 2);
                        if (j >= Sk || !band.sees(i, j)) x = -ATTNSPEC_INF;
                    }
                    s[mt][nt][e] = x;
                }

        // Online softmax update; rows g (e = 0, 1) and g + 8 (e = 2, 3); a row's 4 threads share m.
        u32 pa[MT][BC / 16][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                float mx = m_run[mt][hr];
#pragma unroll
                for (int nt = 0; nt < NTILE; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * hr], s[mt][nt][2 * hr + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float base = (mx == -ATTNSPEC_INF) ? 0.f : mx;
                const float alpha = exp2f(m_run[mt][hr] - base);
                m_run[mt][hr] = mx;
                float rs = 0.f;
#pragma unroll
                for (int nt = 0; nt < NTILE; ++nt) {
                    const float p0 = exp2f(s[mt][nt][2 * hr] - base);
                    const float p1 = exp2f(s[mt][nt][2 * hr + 1] - base);
                    s[mt][nt][2 * hr] = p0;
                    s[mt][nt][2 * hr + 1] = p1;
                    rs += p0 + p1;
                }
                l_run[mt][hr] = l_run[mt][hr] * alpha + rs;
#pragma unroll
                for (int dt = 0; dt < DTILE; ++dt) {
                    acc_o[mt][dt][2 * hr] *= alpha;
                    acc_o[mt][dt][2 * hr + 1] *= alpha;
                }
            }
            // S accumulators of n-tiles 2c, 2c+1 are exactly the A fragment of key chunk c.
#pragma unroll
            for (int c = 0; c < BC / 16; ++c) acc_to_a_fragment<T>(pa[mt][c], s[mt][2 * c], s[mt][2 * c + 1]);
        }

        // O += P V.
#pragma unroll
        for (int c = 0; c < BC / 16; ++c) {
#pragma unroll
            for (int dp = 0; dp < DP / 16; ++dp) {
                u32 bv[4];
                ldmatrix_x4_trans(bv, vb + 2 * (c * 16 * LD + dp * 16));
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
                    mma_16816_x2<T>(acc_o[mt][2 * dp], acc_o[mt][2 * dp + 1], pa[mt][c], bv);
            }
        }
        __syncthreads();  // every warp is done with this buffer before the next prefetch overwrites it
    }
    cp_async_wait<0>();

    // Epilogue: l is a per-thread partial sum until here.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            float l = l_run[mt][hr];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const float inv = l > 0.f ? 1.f / l : 0.f;
            const int i = i0 + wrow0 + mt * 16 + g + 8 * hr;
            if (i >= Sq) continue;
            T* orow = out + b * o_sb + h * o_sh + (q0 + i) * o_ss;
#pragma unroll
            for (int dt = 0; dt < DTILE; ++dt) {
                const int col = dt * 8 + 2 * t;
                store_pair<T, VEC>(orow, col, d, acc_o[mt][dt][2 * hr] * inv, acc_o[mt][dt][2 * hr + 1] * inv);
            }
            if (t == 0) lse[b * l_sb + h * l_sh + q0 + i] = l > 0.f ? (m_run[mt][hr] + log2f(l)) * ATTNSPEC_LN2 : -ATTNSPEC_INF;
        }
    }
}

#ifdef ATTNSPEC_INSTANTIATE
// Representative instantiations for nvcc checks and resource reports (Python instantiates on demand).
#define ATTNSPEC_FWD_ARGS(T)                                                                                   \
    const T*, const T*, const T*, T*, float*, const int*, const int*, int, int, int, int, int, i64, i64, i64, \
        i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, float, int, int, int
template __global__ void attn_fwd<bf16_t, 64, 2, 64, true>(ATTNSPEC_FWD_ARGS(bf16_t));
template __global__ void attn_fwd<bf16_t, 128, 2, 64, true>(ATTNSPEC_FWD_ARGS(bf16_t));
template __global__ void attn_fwd<bf16_t, 128, 2, 32, true>(ATTNSPEC_FWD_ARGS(bf16_t));
template __global__ void attn_fwd<bf16_t, 128, 1, 64, true>(ATTNSPEC_FWD_ARGS(bf16_t));
template __global__ void attn_fwd<f16_t, 128, 2, 64, true>(ATTNSPEC_FWD_ARGS(f16_t));
template __global__ void attn_fwd<bf16_t, 64, 2, 64, false>(ATTNSPEC_FWD_ARGS(bf16_t));
template __global__ void attn_fwd<bf16_t, 256, 1, 32, true>(ATTNSPEC_FWD_ARGS(bf16_t));
#endif
