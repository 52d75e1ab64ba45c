"""Liger-Kernel's distillation losses as ``kd_loss`` backends: ``liger-kl`` and ``liger-jsd``.

The contract's KD loss is ``α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1-α)·CE(s, y)`` averaged over the rows whose
label is not ``ignore_index`` (SPEC KD-1). Liger's kernels take log-probabilities and compute the divergence
only, so each backend is the call a user writes around them:

- log-probabilities ``log_softmax(s / T)`` and ``log_softmax(t / T)`` by torch, in float32 (Liger's kernels
  read their inputs as float32 whatever the dtype);
- ``liger-kl``: ``LigerKLDivLossFunction.apply(log_p_s, log_p_t, "batchmean", True)`` (``log_target=True``),
  i.e. ``KL(p_t ‖ p_s)`` summed over V and divided by the rows passed. The kernel takes no labels: the counted
  rows (label != ignore_index) are selected before the call, as a caller masks padding rows;
- ``liger-jsd``: ``LigerJSDFunction.apply(log_p_s, log_p_t, labels, 0.0, ignore_index)``: the generalised JSD at
  ``beta = 0``, which Liger defines as the forward ``KL(p_t ‖ p_s)``, divided by the rows whose label is not
  ``ignore_index`` (the kernel takes the labels itself);
- the ``(1-α)·CE(s, y)`` term, only with labels and α != 1: ``F.cross_entropy(s, y, ignore_index)`` by torch
  (Liger's losses here have no cross-entropy part);
- ``ds`` by autograd through all of it (Liger's own backward for its part), in s's dtype.

The loss is Liger's divergence as it comes: KD's ``T²`` factor (Hinton's gradient scaling) is not part of
Liger's losses and the adapter adds none, so clauses that use ``T != 1`` find that difference; it is written
with its evidence in ``conformance/xfails/liger-kl.txt`` and ``liger-jsd.txt``, never corrected here.

Where: compiled Triton on CUDA; on the CPU only under Triton's interpreter (``TRITON_INTERPRET=1``), and only
for the kernels that run there: the factory calls each kernel once on a 2 x 3 problem and makes the backend
unavailable with the error when it fails (Liger 0.8.5's KL kernel does, see ``docs/adapters.md``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from implementations import ops
from implementations.base import Backend, BackendUnavailable, Capabilities, new_output, wide_dtype
from implementations.ops import implementation
from implementations.packages import installed_version
from implementations.triton.common import interpreter_requested

#: Liger's KL and JSD kernels load their inputs as float32; float64 is not declared
KD_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: on Triton's interpreter float32 only: each interpreted call takes about a second here, and a failing
#: KD-4 property is shrunk by hypothesis over hundreds of calls (about 4 minutes per case on 2 CPU cores)
INTERPRETER_KD_DTYPES = (torch.float32,)
#: JSD's beta at which Liger defines the loss as the forward KL(p_t ‖ p_s)
FORWARD_KL_BETA = 0.0

Divergence = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, int], torch.Tensor]


def kl_divergence() -> Divergence:
    """Liger's KL divergence over the counted rows (selected here: the kernel takes no labels)."""
    from liger_kernel.ops.kl_div import LigerKLDivLossFunction

    def divergence(log_p_s: torch.Tensor, log_p_t: torch.Tensor, labels: torch.Tensor | None,
                   ignore_index: int) -> torch.Tensor:
        if labels is not None:
            counted = labels != ignore_index
            log_p_s, log_p_t = log_p_s[counted], log_p_t[counted]
        return LigerKLDivLossFunction.apply(log_p_s, log_p_t, "batchmean", True)

    return divergence


def jsd_forward_kl() -> Divergence:
    """Liger's generalised JSD at beta = 0 (forward KL), given the labels itself."""
    from liger_kernel.ops.jsd import LigerJSDFunction

    def divergence(log_p_s: torch.Tensor, log_p_t: torch.Tensor, labels: torch.Tensor | None,
                   ignore_index: int) -> torch.Tensor:
        return LigerJSDFunction.apply(log_p_s, log_p_t, labels, FORWARD_KL_BETA, ignore_index)

    return divergence


class LigerKD(Backend):
    """``kd_loss`` through one of Liger's divergences (the module docstring gives the mapping)."""

    def __init__(self, name: str, divergence: Divergence, call: str, version: str, interpreter: bool) -> None:
        self.name = name
        self.divergence = divergence
        where = "Triton interpreter on the CPU" if interpreter else "compiled Triton, CUDA"
        self.description = f"Liger-Kernel {version} {call} as kd_loss ({where})"
        self.capabilities = Capabilities(
            devices=("cpu",) if interpreter else ("cuda",), dtypes=(),
            kd_dtypes=INTERPRETER_KD_DTYPES if interpreter else KD_DTYPES, emulated=interpreter,
            notes=(
                f"liger-kernel {version}: {call} on log_softmax(s/T), log_softmax(t/T) (torch, float32)",
                "no T^2 factor: Liger's loss is the divergence itself; the adapter adds none (KD-1/2/4/6 with "
                "T != 1 find it: conformance/xfails/" + name + ".txt)",
                "(1 - alpha) * CE(s, y) with labels: torch F.cross_entropy (no cross-entropy part in Liger's "
                "divergence losses); ds by autograd",
                "not fused: the float32 log-probabilities are [N, V] tensors held by torch (KD-7 not claimed)",
                where,
            ),
        )

    @implementation("kd_loss")
    def kd_loss(self, inp: ops.KDInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """``α·D(log_softmax(t/T) ‖ log_softmax(s/T)) + (1-α)·CE(s, y)`` with D Liger's divergence; ds by autograd."""
        s = inp.s.detach().requires_grad_()
        with torch.enable_grad():
            log_p_s = F.log_softmax(s.float() / inp.temperature, dim=-1)
            log_p_t = F.log_softmax(inp.t.float() / inp.temperature, dim=-1)
            loss = inp.alpha * self.divergence(log_p_s, log_p_t, inp.labels, inp.ignore_index)
            if inp.labels is not None and inp.alpha != 1.0:
                loss = loss + (1 - inp.alpha) * F.cross_entropy(s.float(), inp.labels, ignore_index=inp.ignore_index)
            (ds,) = torch.autograd.grad(loss, s)
        loss_out = new_output((), wide_dtype(inp.s.dtype), inp.s.device)
        loss_out.copy_(loss.detach())
        ds_out = new_output(inp.shape, inp.s.dtype, inp.s.device)
        ds_out.copy_(ds.reshape(inp.shape))
        return loss_out, ds_out


def smoke_test(divergence: Divergence, device: str) -> None:
    """Call ``divergence`` once on a 2 x 3 problem (the interpreter may not run a kernel)."""
    logits = torch.log_softmax(torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]], device=device), dim=-1)
    divergence(logits, logits.flip(0), None, -100)


def make(name: str, build: Callable[[], Divergence], call: str) -> LigerKD:
    """One Liger backend, or BackendUnavailable with the reason (package, device, interpreter)."""
    version = installed_version("liger-kernel", "pip install 'attnspec[liger]'")
    interpreter = interpreter_requested()
    if not torch.cuda.is_available() and not interpreter:
        raise BackendUnavailable("no CUDA device and TRITON_INTERPRET is not set (Liger's kernels are Triton)")
    divergence = build()
    if interpreter:
        try:
            smoke_test(divergence, "cpu")
        except Exception as exc:  # the interpreter's failure, whatever its type, is the reason
            raise BackendUnavailable(f"liger-kernel {version}'s {call} does not run on Triton's interpreter: "
                                     f"{type(exc).__name__}: {str(exc)[:200]}") from exc
    return LigerKD(name, divergence, call, version, interpreter)


def kl_backend() -> LigerKD:
    """``liger-kl``: LigerKLDivLossFunction (KL divergence, log_target=True, batchmean)."""
    return make("liger-kl", kl_divergence, "LigerKLDivLossFunction(log_target=True, reduction='batchmean')")


def jsd_backend() -> LigerKD:
    """``liger-jsd``: LigerJSDFunction at beta = 0 (forward KL), with the labels."""
    return make("liger-jsd", jsd_forward_kl, "LigerJSDFunction(beta=0)")
