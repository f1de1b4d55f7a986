"""FP8 (e4m3) linear layers for inference: dynamic per-row activation scales, per-output-channel weight scales.

`convert_linears_to_fp8(module)` replaces, in place, every `nn.Linear` (or subclass computing `x @ W.T + b`) whose
dimensions suit the FP8 matrix units (multiples of 16) by `Fp8Linear`, which quantises its weight once and each
input row on the fly, multiplies the codes with `torch._scaled_mm` (unit scales, float32 accumulation, bf16
result: cuBLAS on Hopper GPUs; the same op runs on the CPU for tests), then applies the row and channel scales and
the bias in float32 (DINOv3's own fp8 recipe; with `_scaled_mm`'s row-wise scaled kernel instead, the whole
SAM-3D Body path ran at 167 rather than 176 images/s at batch 64 on an H200, two runs on two machines). Meant for a copy of a
frozen backbone (`streamer.capture.sam3d_fast.FastBodyEstimator(precision="fp8")`); the copy's other layers
(norms, attention) keep their dtype. Quantisation error: e4m3 keeps 3 mantissa bits, so each product carries a
relative rounding error of up to 2^-4 per operand; how far a whole network's outputs move is measured, not
assumed (`streamer bench estimator` reports it against the stock path).
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

__all__ = ["FP8_DTYPE", "FP8_MAX", "Fp8Linear", "convert_linears_to_fp8", "quantize_rows"]

logger = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
_MIN_AMAX = 1e-12  # an all-zero row gets this amax (scale ~2e-15): its codes are 0 and its products exact zeros
_ALIGN = 16  # _scaled_mm: K and N multiples of 16


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row e4m3 quantisation: x ~= codes * scale.

    x: (M, K) floating. Returns codes (M, K) float8_e4m3fn and scale (M, 1) float32 (row amax / 448).
    """
    if x.dim() != 2:
        raise ValueError(f"quantize_rows: expected a (M, K) tensor, got shape {tuple(x.shape)}")
    x32 = x.float()
    scale = x32.abs().amax(dim=1, keepdim=True).clamp(min=_MIN_AMAX) / FP8_MAX
    codes = (x32 / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return codes, scale


class Fp8Linear(nn.Module):
    """`y = x @ W.T + b` with W and each row of x in e4m3 (row-wise scales), y in the input's dtype.

    weight: (N, K) float, bias: (N,) or None. K and N must be multiples of 16. fast_accum: Hopper's faster FP8
    accumulation (less exact; off by default). Buffers: weight_codes (N, K) e4m3, weight_scale (1, N) float32,
    bias (N,) float32 or absent, unit_scale () float32.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, fast_accum: bool = False) -> None:
        super().__init__()
        if weight.dim() != 2 or weight.shape[0] % _ALIGN or weight.shape[1] % _ALIGN:
            raise ValueError(f"Fp8Linear: weight must be (N, K) with N and K multiples of {_ALIGN}, "
                             f"got {tuple(weight.shape)}")
        if bias is not None and tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"Fp8Linear: bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")
        self.out_features, self.in_features = (int(s) for s in weight.shape)
        self.fast_accum = fast_accum
        codes, scale = quantize_rows(weight.detach())
        self.register_buffer("weight_codes", codes)
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.register_buffer("unit_scale", torch.ones((), dtype=torch.float32, device=weight.device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, fast_accum: bool = False) -> "Fp8Linear":
        """The FP8 version of `linear` (its current weight and effective bias: a subclass may mask or derive its
        bias in forward, so the bias is read as linear(0); raises ValueError if forward is not x @ W.T + b)."""
        weight = linear.weight.detach()
        with torch.no_grad():
            zero = torch.zeros((1, linear.in_features), dtype=weight.dtype, device=weight.device)
            bias = linear(zero).reshape(-1).float()
            probe = torch.randn((4, linear.in_features), generator=torch.Generator().manual_seed(0))
            probe = probe.to(device=weight.device, dtype=weight.dtype)
            got = linear(probe).float()
            want = probe.float() @ weight.float().t() + bias
        tolerance = 1e-2 * float(want.norm()) + 1e-6
        if not torch.isfinite(got).all() or float((got - want).norm()) > tolerance:
            raise ValueError(f"{type(linear).__name__}: forward is not x @ weight.T + bias; not converted")
        has_bias = linear.bias is not None or bool(bias.abs().max() > 0)
        return cls(weight, bias if has_bias else None, fast_accum=fast_accum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., K) floating -> (..., N) in x's dtype."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Fp8Linear: expected (..., {self.in_features}) input, got {tuple(x.shape)}")
        lead = x.shape[:-1]
        codes, scale = quantize_rows(x.reshape(-1, self.in_features))
        # unit-scaled GEMM (cuBLAS; the row-wise scaled kernel measured slower, module docstring), then the scales
        y = torch._scaled_mm(codes, self.weight_codes.t(), scale_a=self.unit_scale, scale_b=self.unit_scale,
                             out_dtype=torch.bfloat16, use_fast_accum=self.fast_accum)
        y = y.float() * scale * self.weight_scale
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"fast_accum={self.fast_accum}")


def convert_linears_to_fp8(module: nn.Module, *, fast_accum: bool = False,
                           include: Callable[[str], bool] | None = None) -> list[str]:
    """Replace, in place, every linear layer of `module` that can run in FP8 by an `Fp8Linear`.

    include: which layers to consider, by qualified name (default: all). Skipped (logged): layers whose in/out
    features are not multiples of 16, and subclasses whose forward is not affine. Returns the qualified names
    of the replaced layers (empty if none).
    """
    targets = [(name, child) for name, child in module.named_modules()
               if name and isinstance(child, nn.Linear) and (include is None or include(name))]
    replaced = []
    for name, linear in targets:
        if linear.in_features % _ALIGN or linear.out_features % _ALIGN:
            logger.info("fp8: %s kept (%d -> %d features, not multiples of %d)", name, linear.in_features,
                        linear.out_features, _ALIGN)
            continue
        try:
            fp8 = Fp8Linear.from_linear(linear, fast_accum=fast_accum)
        except ValueError as exc:
            logger.info("fp8: %s kept (%s)", name, exc)
            continue
        parent_name, _, child_name = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        parent._modules[child_name] = fp8
        replaced.append(name)
    logger.info("fp8: %d linear layers converted", len(replaced))
    return replaced
