"""Mutant backends: a correct torch backend with one planted defect each, which the suite must catch.

``Control`` is the defect-free twin: it must pass every clause a mutant is checked against, so a caught
mutant is caught for its defect and not for something else. Factories (``mutant_NAME``) are plugged into
the suite with ``--backend tests.mutants:mutant_NAME``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from implementations import schedule as sched
from implementations import validate
from implementations.base import Backend, Capabilities, new_output

#: defects whose output accumulator is held in float16 / bfloat16, and the keys added to it between roundings:
#: every key (``half_accumulation``), or a tile of 64 keys whose P·V product is summed in full precision, as a tiled
#: kernel that keeps its accumulator in half precision between key tiles (``half_tile_accumulation``)
HALF_ACCUMULATORS = {"half_accumulation": 1, "half_tile_accumulation": 64}


class Control(Backend):
    """Straightforward torch attention, softmax statistics, KD loss and reduction; ``defect`` says what
    to break (None: nothing).

    Attention and the KD loss are computed in float64 and rounded to the inputs' dtype once, so the twin's
    error is the final rounding alone on any machine: whether it passes does not rest on how accurate that
    machine's float32 kernels are, and a mutant differs from it by its defect only."""

    name = "control"
    defect: str | None = None
    capabilities = Capabilities(
        devices=("cpu",),
        dtypes=(torch.float32, torch.float16, torch.bfloat16),
        backward_dtypes=(torch.float32,),
        head_dims=(1, 256),
        memory="quadratic",
        saves="scores",
        deterministic=True,
        stats_dtypes=(torch.float32,),
        kd_dtypes=(torch.float32,),
        reduce_dtypes=(torch.float32,),
        reduce_schedule="pairwise tree",
    )

    # -- attention ---------------------------------------------------------------------------------

    def _scores(self, q: torch.Tensor, k: torch.Tensor, causal: str | None, scale: float) -> torch.Tensor:
        Hq, Hk = q.shape[1], k.shape[1]
        if self.defect == "gqa_modulo":
            index = torch.arange(Hq) % Hk
        else:
            index = torch.arange(Hq) // (Hq // Hk)
        kx = k.double()[:, index]
        if self.defect == "missing_scale":
            scale = 1.0
        s = (q.double() @ kx.transpose(-1, -2)) * scale
        if causal is not None:
            Sq, Sk = q.shape[2], k.shape[2]
            offset = Sk - Sq if causal == "bottom_right" else 0
            if self.defect == "wrong_causal":
                offset = 0
            i = torch.arange(Sq)[:, None]
            j = torch.arange(Sk)[None, :]
            s = s.masked_fill(j > i + offset, float("-inf"))
        return s

    def attention(self, q, k, v, *, causal=None, scale=None, tiles=None):  # noqa: ANN001, ANN201
        causal, scale = validate.attention_args(self.capabilities, q, k, v, causal=causal, scale=scale, tiles=tiles)
        s = self._scores(q, k, causal, scale)
        m = s.amax(-1, keepdim=True)
        empty = torch.isinf(m) & (m < 0)
        p = torch.exp(s - torch.where(empty, 0.0, m))
        l = p.sum(-1, keepdim=True)
        if self.defect != "nan_masked_rows":
            l = torch.where(empty, 1.0, l)
        Hq, Hk = q.shape[1], k.shape[1]
        index = torch.arange(Hq) % Hk if self.defect == "gqa_modulo" else torch.arange(Hq) // (Hq // Hk)
        vx = v.double()[:, index]
        if self.defect in HALF_ACCUMULATORS and q.dtype in (torch.float16, torch.bfloat16):
            tile = HALF_ACCUMULATORS[self.defect]
            pv = torch.zeros(q.shape, dtype=q.dtype)
            for j in range(0, vx.shape[2], tile):  # acc += P_tile V_tile (in float64), acc held in half
                pv = (pv.double() + p[..., j:j + tile] @ vx[:, :, j:j + tile]).to(q.dtype)
            out = pv.double() / l
        else:
            out = (p @ vx) / l
        lse = (m + torch.log(l)).squeeze(-1)
        if self.defect != "nan_masked_rows":
            lse = torch.where(empty.squeeze(-1), float("-inf"), lse)
        if self.defect == "lse_base2":
            lse = lse / math.log(2.0)
        result = new_output(q.shape, q.dtype, q.device)
        result.copy_(out)
        return result, lse.float()

    # -- KD loss ------------------------------------------------------------------------------------

    def kd_loss(self, s, t, *, temperature, alpha=1.0, labels=None, ignore_index=-100):  # noqa: ANN001, ANN201
        s2, t2, y, alpha = validate.kd_args(self.capabilities, s, t, temperature=temperature, alpha=alpha,
                                            labels=labels, ignore_index=ignore_index)
        T = float(temperature)
        sg = s2.detach().double().requires_grad_()
        with torch.enable_grad():
            log_ps, log_pt = F.log_softmax(sg / T, -1), F.log_softmax(t2.double() / T, -1)
            factor = T if self.defect == "kd_no_t_squared" else T * T
            if self.defect == "kd_reduction_mean":  # averages over N·V elements instead of N rows
                loss = F.kl_div(log_ps, log_pt, log_target=True, reduction="mean") * factor
            else:
                kl_rows = F.kl_div(log_ps, log_pt, log_target=True, reduction="none").sum(-1) * factor
                if y is None:
                    loss = kl_rows.mean()
                else:
                    valid = y != ignore_index
                    ce = F.cross_entropy(sg, torch.where(valid, y, 0), reduction="none")
                    rows = alpha * kl_rows + (1 - alpha) * ce
                    loss = torch.where(valid, rows, 0.0).sum() / max(int(valid.sum()), 1)
            (ds,) = torch.autograd.grad(loss, sg)
        out = new_output(s.shape, s.dtype, s.device)
        out.copy_(ds.reshape(s.shape))
        return loss.float().detach(), out

    # -- reduction ----------------------------------------------------------------------------------

    def reduce_sum(self, x):  # noqa: ANN001, ANN201
        validate.rows_arg(self.capabilities, "reduce_sum", x)
        declared = sched.pairwise_tree(x.numel())
        order = sched.sequential(x.numel()) if self.defect == "sequential_declared_tree" else declared
        value = torch.tensor(order.evaluate(x.numpy()), dtype=torch.float32)
        return value, declared

    def prefix_sum(self, x):  # noqa: ANN001, ANN201
        validate.rows_arg(self.capabilities, "prefix_sum", x)
        declared = sched.hillis_steele_scan(x.numel())
        order = sched.sequential_scan(x.numel()) if self.defect == "sequential_declared_parallel_scan" else declared
        return torch.from_numpy(order.evaluate(x.numpy())), declared


def _make(defect: str | None):  # noqa: ANN202
    def factory() -> Control:
        backend = Control()
        backend.name = f"mutant-{defect}" if defect else "control"
        backend.defect = defect
        return backend
    return factory


#: defect -> (factory name, the conformance test that must catch it, the clause it checks)
MUTANTS: dict[str, tuple[str, str]] = {
    "wrong_causal": ("conformance/test_attention.py::test_causal_variants", "ATT-3"),
    "missing_scale": ("conformance/test_attention.py::test_custom_scale", "ATT-8"),
    "lse_base2": ("conformance/test_attention.py::test_lse_natural_log", "ATT-2"),
    "half_accumulation": ("conformance/test_attention.py::test_forward_matches_oracle", "ATT-1"),
    "nan_masked_rows": ("conformance/test_attention.py::test_fully_masked_rows", "ATT-4"),
    "kd_no_t_squared": ("conformance/test_kd_loss.py::test_kd_loss_matches_oracle", "KD-1"),
    "kd_reduction_mean": ("conformance/test_kd_loss.py::test_kd_loss_matches_oracle", "KD-1"),
    "sequential_declared_tree": ("conformance/test_work_depth.py::test_kernel_follows_schedule", "WD-2"),
    "gqa_modulo": ("conformance/test_attention.py::test_gqa_equals_repeated_kv", "ATT-6"),
    "sequential_declared_parallel_scan": ("conformance/test_work_depth.py::test_scans", "WD-5"),
}

control = _make(None)
mutant_wrong_causal = _make("wrong_causal")
mutant_missing_scale = _make("missing_scale")
mutant_lse_base2 = _make("lse_base2")
mutant_half_accumulation = _make("half_accumulation")
mutant_half_tile_accumulation = _make("half_tile_accumulation")
mutant_nan_masked_rows = _make("nan_masked_rows")
mutant_kd_no_t_squared = _make("kd_no_t_squared")
mutant_kd_reduction_mean = _make("kd_reduction_mean")
mutant_sequential_declared_tree = _make("sequential_declared_tree")
mutant_gqa_modulo = _make("gqa_modulo")
mutant_sequential_declared_parallel_scan = _make("sequential_declared_parallel_scan")
