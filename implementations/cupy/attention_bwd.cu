// Exact attention backward by recomputation from lse (FlashAttention-2 algorithm, deterministic form).
//
// With x_ij = scale * q_i . k_j (masked pairs excluded), P_ij = exp(x_ij - lse_i), dO the output gradient:
//   delta_i = sum_d dO_id O_id            (= sum_j P_ij dP_ij)            attn_delta
//   dP_ij   = dO_i . v_j
//   dS_ij   = P_ij (dP_ij - delta_i)
//   dV_j    = sum_i P_ij dO_i,   dK_j = scale * sum_i dS_ij q_i,   dQ_i = scale * sum_j dS_ij k_j
// GQA: dK, dV of KV head hk sum over the query heads hk*G .. hk*G + G-1 (G = Hq / Hk).
//
// attn_bwd_dkdv: one CTA of 4 warps owns 64 keys of one (batch, KV head) and DO of the DP output columns
// (DO = DP up to 128; wider heads split the columns over blockIdx.z and recompute S^T, dP^T per split,
// since 2 x 16 x 256 float accumulators do not fit one warp's registers); warp w owns 16 keys and works
// on transposed products, so that every matrix product stays warp-local:
//   S^T = K Q^T, P^T = 2^(S^T * scale * log2 e - lse_i * log2 e), dP^T = V dO^T, dV += P^T dO,
//   dS^T = P^T o (dP^T - delta_i), dK += dS^T Q,
// looping over the query heads of the group and the query blocks (BQ rows, double-buffered cp.async).
// attn_bwd_dq: one CTA owns 64 query rows (16 per warp), loops over the key blocks and recomputes
//   S = Q K^T, P, dP = dO V^T, dS, dQ += dS K.
// Each output element is accumulated by one thread in a fixed order, so the gradients are bit-identical
// from run to run (no atomics). Masked pairs get P = 0 directly; rows with lse = -inf (no visible key)
// and padding rows get lse = +inf in shared memory, so their P is exactly 0 and their dQ is 0.
// Visibility is the forward's band (common.cuh make_band: causal mode 0 none / 1 top-left / 2 bottom-right
// and the sliding window (left, right), -1 unbounded): dK/dV visit only the query blocks that see a key of
// their block, dQ only the key blocks its rows see; blocks crossing a band edge are masked.
#include "attention.cuh"

// delta[r] = sum_d dout[r, d] * out[r, d] in float32; one warp per row r of [B*Hq*Sq].
template <class T>
__global__ void __launch_bounds__(256) attn_delta(const T* __restrict__ out, const T* __restrict__ dout,
                                                  float* __restrict__ delta, int Hq, int Sq, int d, i64 o_sb,
                                                  i64 o_sh, i64 o_ss, i64 g_sb, i64 g_sh, i64 g_ss, i64 rows) {
    const i64 r = (i64)blockIdx.x * 8 + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (r >= rows) return;
    const int i = (int)(r % Sq);
    const i64 bh = r / Sq;
    const int b = (int)(bh / Hq), h = (int)(bh % Hq);
    const T* o = out + b * o_sb + h * o_sh + i * o_ss;
    const T* go = dout + b * g_sb + h * g_sh + i * g_ss;
    float acc = 0.f;
    for (int c = lane; c < d; c += 32) acc += to_f32(o[c]) * to_f32(go[c]);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) delta[r] = acc;
}

template <class T, int DP, int BQ, int DO, bool VEC>
__global__ void __launch_bounds__(128) attn_bwd_dkdv(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ dout,
    const float* __restrict__ lse, const float* __restrict__ delta, T* __restrict__ dk, T* __restrict__ dv,
    const int* __restrict__ cu_q, const int* __restrict__ cu_k, int Hq, int Hk, int Sq, int Sk, int d, i64 q_sb,
    i64 q_sh, i64 q_ss, i64 k_sb, i64 k_sh, i64 k_ss, i64 v_sb, i64 v_sh, i64 v_ss, i64 g_sb, i64 g_sh, i64 g_ss,
    i64 o_sb, i64 o_sh, i64 o_ss, i64 l_sb, i64 l_sh, float scale, int causal, int win_left, int win_right) {
    constexpr int NW = 4, NT = 32 * NW, BK = 16 * NW, LD = DP + 8;
    constexpr int QTILE = BQ / 8, OTILE = DO / 8;
    static_assert(DP % 16 == 0 && BQ % 16 == 0 && DO % 16 == 0 && DP % DO == 0, "tile sizes must be multiples of 16");

    extern __shared__ vec16 smem_raw[];  // 16-byte aligned dynamic shared memory
    T* sK = reinterpret_cast<T*>(smem_raw);
    T* sV = sK + BK * LD;
    T* sQ = sV + BK * LD;        // two buffers of BQ x LD
    T* sG = sQ + 2 * BQ * LD;    // dO, two buffers of BQ x LD
    float* sL = reinterpret_cast<float*>(sG + 2 * BQ * LD);  // lse * log2 e, two buffers of BQ
    float* sD = sL + 2 * BQ;                                 // delta, two buffers of BQ

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int bh = blockIdx.y, b = bh / Hk, hk = bh % Hk, G = Hq / Hk;
    const int j0 = blockIdx.x * BK;
    const float scale_log2 = scale * ATTNSPEC_LOG2E;
    i64 q0, k0;
    locate_sequence(cu_q, cu_k, b, q0, k0, Sq, Sk);
    if (j0 >= Sk) return;  // varlen: a key block past this sequence's end

    // Query blocks that see any key of this block: j0 - hi <= i <= j0 + BK - 1 - lo.
    const Band band = make_band(Sq, Sk, causal, win_left, win_right);
    const int i_min = band.has_hi ? max(0, j0 - band.hi) : 0;
    const int i_end = band.has_lo ? min(Sq, j0 + BK - band.lo) : Sq;
    const int qb0 = i_min / BQ;
    const int nqb = i_min >= i_end ? 0 : (i_end + BQ - 1) / BQ - qb0;
    const int iters = nqb * G;

    load_tile<T, BK, DP, LD, NT, VEC>(sK, k + b * k_sb + hk * k_sh + k0 * k_ss, k_ss, j0, Sk, d);
    load_tile<T, BK, DP, LD, NT, VEC>(sV, v + b * v_sb + hk * v_sh + k0 * v_ss, v_ss, j0, Sk, d);

    // Stage the query-side tiles of iteration `it` (query head hk*G + it / nqb, block qb0 + it % nqb).
    auto stage = [&](int it, int buf) {
        const int h = hk * G + it / nqb, i0 = (qb0 + it % nqb) * BQ;
        load_tile<T, BQ, DP, LD, NT, VEC>(sQ + buf * BQ * LD, q + b * q_sb + h * q_sh + q0 * q_ss, q_ss, i0, Sq, d);
        load_tile<T, BQ, DP, LD, NT, VEC>(sG + buf * BQ * LD, dout + b * g_sb + h * g_sh + q0 * g_ss, g_ss, i0, Sq,
                                          d);
        const i64 row = b * l_sb + h * l_sh + q0;
        for (int r = threadIdx.x; r < BQ; r += NT) {
            const int i = i0 + r;
            const float l = i < Sq ? lse[row + i] : -ATTNSPEC_INF;
            sL[buf * BQ + r] = l == -ATTNSPEC_INF ? ATTNSPEC_INF : l * ATTNSPEC_LOG2E;
            sD[buf * BQ + r] = i < Sq ? delta[row + i] : 0.f;
        }
    };
    if (iters > 0) stage(0, 0);
    cp_async_commit();

    // This CTA accumulates output columns [dcol0, dcol0 + DO) of dK and dV (blockIdx.z splits wide heads).
    const int dcol0 = blockIdx.z * DO;
    float acc_dk[OTILE][4], acc_dv[OTILE][4];
#pragma unroll
    for (int dt = 0; dt < OTILE; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_dk[dt][e] = acc_dv[dt][e] = 0.f;

    // Per-lane shared addresses; the loops add compile-time byte offsets (2 bytes per element).
    const int a_row = lane % 16, a_col = 8 * (lane / 16);
    const int b_row = 8 * (lane / 16) + lane % 8, b_col = 8 * ((lane / 8) % 2);
    const int wkey0 = warp * 16;
    const u32 k_lane = smem_addr(sK) + 2 * ((wkey0 + a_row) * LD + a_col);
    const u32 v_lane = smem_addr(sV) + 2 * ((wkey0 + a_row) * LD + a_col);
    const u32 qb_lane = smem_addr(sQ) + 2 * (b_row * LD + b_col), qa_lane = smem_addr(sQ) + 2 * (a_row * LD + a_col);
    const u32 gb_lane = smem_addr(sG) + 2 * (b_row * LD + b_col), ga_lane = smem_addr(sG) + 2 * (a_row * LD + a_col);

    for (int it = 0; it < iters; ++it) {
        const int buf = it & 1;
        if (it + 1 < iters) stage(it + 1, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const u32 boff = 2 * buf * BQ * LD;
        const float* ls = sL + buf * BQ;
        const float* ds = sD + buf * BQ;
        const int i0 = (qb0 + it % nqb) * BQ;

        // S^T = K Q^T and dP^T = V dO^T (rows: this warp's 16 keys; columns: BQ queries).
        float st[QTILE][4], dpt[QTILE][4];
        mma_rows_x2<T, DP, BQ, LD>(st, dpt, k_lane, v_lane, qb_lane + boff, gb_lane + boff);

        // P^T and dS^T in place; element e of tile nt: key j = j0 + wkey0 + g + 8 (e / 2),
        // query i = i0 + 8 nt + 2t + e % 2.
        const bool need_mask = (band.has_hi && i0 < j0 + BK - 1 - band.hi) ||
                               (band.has_lo && i0 + BQ - 1 > j0 - band.lo);
#pragma unroll
        for (int nt = 0; nt < QTILE; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int ci = nt * 8 + 2 * t + (e % 2);
                float p = exp2f(st[nt][e] * scale_log2 - ls[ci]);
                if (need_mask) {
                    const int j = j0 + wkey0 + g + 8 * (e / 2);
                    if (!band.sees(i0 + ci, j)) p = 0.f;
                }
                st[nt][e] = p;
                dpt[nt][e] = p * (dpt[nt][e] - ds[ci]);
            }

        // dV += P^T dO and dK += dS^T Q (B fragments of dO and Q through ldmatrix.trans).
#pragma unroll
        for (int c = 0; c < BQ / 16; ++c) {
            u32 ap[4], as[4];
            acc_to_a_fragment<T>(ap, st[2 * c], st[2 * c + 1]);
            acc_to_a_fragment<T>(as, dpt[2 * c], dpt[2 * c + 1]);
#pragma unroll
            for (int dp = 0; dp < DO / 16; ++dp) {
                u32 bg[4], bq[4];
                ldmatrix_x4_trans(bg, ga_lane + boff + 2 * (c * 16 * LD + dcol0 + dp * 16));
                ldmatrix_x4_trans(bq, qa_lane + boff + 2 * (c * 16 * LD + dcol0 + dp * 16));
                mma_16816_x2<T>(acc_dv[2 * dp], acc_dv[2 * dp + 1], ap, bg);
                mma_16816_x2<T>(acc_dk[2 * dp], acc_dk[2 * dp + 1], as, bq);
            }
        }
        __syncthreads();  // the next iteration's prefetch overwrites this buffer
    }
    cp_async_wait<0>();

    // dk, dv share the strides o_* (fresh outputs of one shape).
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        const int j = j0 + wkey0 + g + 8 * hr;
        if (j >= Sk) continue;
        const i64 base = b * o_sb + hk * o_sh + (k0 + j) * o_ss;
#pragma unroll
        for (int dt = 0; dt < OTILE; ++dt) {
            const int col = dcol0 + dt * 8 + 2 * t;
            const float dk0 = acc_dk[dt][2 * hr] * scale, dk1 = acc_dk[dt][2 * hr + 1] * scale;
            const float dv0 = acc_dv[dt][2 * hr], dv1 = acc_dv[dt][2 * hr + 1];
            if (VEC && col < d) {
                *reinterpret_cast<u32*>(dk + base + col) = pack2<T>(dk0, dk1);
                *reinterpret_cast<u32*>(dv + base + col) = pack2<T>(dv0, dv1);
            } else {
                if (col < d) {
                    dk[base + col] = from_f32<T>(dk0);
                    dv[base + col] = from_f32<T>(dv0);
                }
                if (col + 1 < d) {
                    dk[base + col + 1] = from_f32<T>(dk1);
                    dv[base + col + 1] = from_f32<T>(dv1);
                }
            }
        }
    }
}

template <class T, int DP, int BC, bool VEC>
__global__ void __launch_bounds__(128) attn_bwd_dq(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ dout,
    const float* __restrict__ lse, const float* __restrict__ delta, T* __restrict__ dq, const int* __restrict__ cu_q,
    const int* __restrict__ cu_k, int Hq, int Hk, int Sq, int Sk, int d, i64 q_sb, i64 q_sh, i64 q_ss, i64 k_sb,
    i64 k_sh, i64 k_ss, i64 v_sb, i64 v_sh, i64 v_ss, i64 g_sb, i64 g_sh, i64 g_ss, i64 o_sb, i64 o_sh, i64 o_ss,
    i64 l_sb, i64 l_sh, float scale, int causal, int win_left, int win_right) {
    constexpr int NW = 4, NT = 32 * NW, BR = 16 * NW, LD = DP + 8;
    constexpr int NTILE = BC / 8, DTILE = DP / 8;
    static_assert(DP % 16 == 0 && BC % 16 == 0, "tile sizes must be multiples of 16");

    extern __shared__ vec16 smem_raw[];  // 16-byte aligned dynamic shared memory
    T* sQ = reinterpret_cast<T*>(smem_raw);
    T* sG = sQ + BR * LD;
    T* sK = sG + BR * LD;       // two buffers of BC x LD
    T* sV = sK + 2 * BC * LD;   // two buffers of BC x LD

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int bh = blockIdx.y, b = bh / Hq, h = bh % Hq, hk = h / (Hq / Hk);
    i64 q0, k0;
    locate_sequence(cu_q, cu_k, b, q0, k0, Sq, Sk);
    const Band band = make_band(Sq, Sk, causal, win_left, win_right);
    const int qblock = band.has_hi ? (gridDim.x - 1 - blockIdx.x) : blockIdx.x;
    const int i0 = qblock * BR;
    if (i0 >= Sq) return;  // varlen: a query block past this sequence's end
    const T* kg = k + b * k_sb + hk * k_sh + k0 * k_ss;
    const T* vg = v + b * v_sb + hk * v_sh + k0 * v_ss;
    const float scale_log2 = scale * ATTNSPEC_LOG2E;
    const int wrow0 = warp * 16;

    const auto [jb_lo, jb_hi] = key_blocks(band, i0, BR, BC, Sq, Sk);

    load_tile<T, BR, DP, LD, NT, VEC>(sQ, q + b * q_sb + h * q_sh + q0 * q_ss, q_ss, i0, Sq, d);
    load_tile<T, BR, DP, LD, NT, VEC>(sG, dout + b * g_sb + h * g_sh + q0 * g_ss, g_ss, i0, Sq, d);
    if (jb_lo < jb_hi) {
        load_tile<T, BC, DP, LD, NT, VEC>(sK, kg, k_ss, jb_lo * BC, Sk, d);
        load_tile<T, BC, DP, LD, NT, VEC>(sV, vg, v_ss, jb_lo * BC, Sk, d);
    }
    cp_async_commit();

    // Per-row statistics of rows g and g + 8 of this warp (lse = -inf or padding: +inf, so P = 0).
    const i64 row_base = b * l_sb + h * l_sh + q0;
    float lse2[2], dl[2];
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        const int i = i0 + wrow0 + g + 8 * hr;
        const float l = i < Sq ? lse[row_base + i] : -ATTNSPEC_INF;
        lse2[hr] = l == -ATTNSPEC_INF ? ATTNSPEC_INF : l * ATTNSPEC_LOG2E;
        dl[hr] = i < Sq ? delta[row_base + i] : 0.f;
    }

    float acc_dq[DTILE][4];
#pragma unroll
    for (int dt = 0; dt < DTILE; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_dq[dt][e] = 0.f;

    const int a_row = lane % 16, a_col = 8 * (lane / 16);
    const int b_row = 8 * (lane / 16) + lane % 8, b_col = 8 * ((lane / 8) % 2);
    const u32 q_lane = smem_addr(sQ) + 2 * ((wrow0 + a_row) * LD + a_col);
    const u32 g_lane = smem_addr(sG) + 2 * ((wrow0 + a_row) * LD + a_col);
    const u32 kb_lane = smem_addr(sK) + 2 * (b_row * LD + b_col), ka_lane = smem_addr(sK) + 2 * (a_row * LD + a_col);
    const u32 vb_lane = smem_addr(sV) + 2 * (b_row * LD + b_col);

    for (int jb = jb_lo; jb < jb_hi; ++jb) {
        const int buf = next_kv_block<T, BC, DP, LD, NT, VEC>(sK, sV, kg, vg, k_ss, v_ss, jb, jb_lo, jb_hi, Sk, d);
        const u32 boff = 2 * buf * BC * LD;

        // S = Q K^T and dP = dO V^T for this warp's 16 rows.
        float s[NTILE][4], dp[NTILE][4];
        mma_rows_x2<T, DP, BC, LD>(s, dp, q_lane, g_lane, kb_lane + boff, vb_lane + boff);

        // dS = P o (dP - delta), masked pairs P = 0.
        const int j0 = jb * BC;
        const bool need_mask = (j0 + BC > Sk) || (band.has_hi && j0 + BC - 1 > i0 + band.hi) ||
                               (band.has_lo && j0 < i0 + BR - 1 + band.lo);
#pragma unroll
        for (int nt = 0; nt < NTILE; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int hr = e / 2;
                float p = exp2f(s[nt][e] * scale_log2 - lse2[hr]);
                if (need_mask) {
                    const int i = i0 + wrow0 + g + 8 * hr;
                    const int j = j0 + nt * 8 + 2 * t + (e % 2);
                    if (j >= Sk || !band.sees(i, j)) p = 0.f;
                }
                dp[nt][e] = p * (dp[nt][e] - dl[hr]);
            }

        // dQ += dS K (K as the B operand [key][d] through ldmatrix.trans).
#pragma unroll
        for (int c = 0; c < BC / 16; ++c) {
            u32 as[4];
            acc_to_a_fragment<T>(as, dp[2 * c], dp[2 * c + 1]);
#pragma unroll
            for (int dq2 = 0; dq2 < DP / 16; ++dq2) {
                u32 bk[4];
                ldmatrix_x4_trans(bk, ka_lane + boff + 2 * (c * 16 * LD + dq2 * 16));
                mma_16816_x2<T>(acc_dq[2 * dq2], acc_dq[2 * dq2 + 1], as, bk);
            }
        }
        __syncthreads();
    }
    cp_async_wait<0>();

#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        const int i = i0 + wrow0 + g + 8 * hr;
        if (i >= Sq) continue;
        T* row = dq + b * o_sb + h * o_sh + (q0 + i) * o_ss;
#pragma unroll
        for (int dt = 0; dt < DTILE; ++dt) {
            const int col = dt * 8 + 2 * t;
            store_pair<T, VEC>(row, col, d, acc_dq[dt][2 * hr] * scale, acc_dq[dt][2 * hr + 1] * scale);
        }
    }
}

#ifdef ATTNSPEC_INSTANTIATE
// Representative instantiations for nvcc checks and resource reports (Python instantiates on demand).
#define ATTNSPEC_DKDV_ARGS(T)                                                                                  \
    const T*, const T*, const T*, const T*, const float*, const float*, T*, T*, const int*, const int*, int, int, \
        int, int, int, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, float, \
        int, int, int
#define ATTNSPEC_DQ_ARGS(T)                                                                                     \
    const T*, const T*, const T*, const T*, const float*, const float*, T*, const int*, const int*, int, int, int, \
        int, int, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, float, int, \
        int, int
template __global__ void attn_delta<bf16_t>(const bf16_t*, const bf16_t*, float*, int, int, int, i64, i64, i64, i64,
                                            i64, i64, i64);
template __global__ void attn_bwd_dkdv<bf16_t, 64, 64, 64, true>(ATTNSPEC_DKDV_ARGS(bf16_t));
template __global__ void attn_bwd_dkdv<bf16_t, 128, 64, 128, true>(ATTNSPEC_DKDV_ARGS(bf16_t));
template __global__ void attn_bwd_dkdv<f16_t, 128, 64, 128, true>(ATTNSPEC_DKDV_ARGS(f16_t));
template __global__ void attn_bwd_dkdv<bf16_t, 256, 32, 128, true>(ATTNSPEC_DKDV_ARGS(bf16_t));
template __global__ void attn_bwd_dq<bf16_t, 64, 64, true>(ATTNSPEC_DQ_ARGS(bf16_t));
template __global__ void attn_bwd_dq<bf16_t, 128, 64, true>(ATTNSPEC_DQ_ARGS(bf16_t));
template __global__ void attn_bwd_dq<f16_t, 128, 64, true>(ATTNSPEC_DQ_ARGS(f16_t));
template __global__ void attn_bwd_dq<bf16_t, 256, 32, true>(ATTNSPEC_DQ_ARGS(bf16_t));
#endif
