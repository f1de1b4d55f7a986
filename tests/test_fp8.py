"""FP8 linear layers (streamer/capture/fp8.py) on the CPU: torch._scaled_mm has a CPU kernel, so the same code
path as on a Hopper GPU runs here (speed is measured on the GPU by `streamer bench estimator`)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from streamer.capture.fp8 import FP8_DTYPE, FP8_MAX, Fp8Linear, convert_linears_to_fp8, quantize_rows


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 9), cols=st.integers(1, 70),
       log_scale=st.floats(-8, 8))
def test_quantize_rows_keeps_each_row_within_e4m3_rounding(seed, rows, cols, log_scale):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((rows, cols), generator=g) * math.exp(log_scale)
    x[0] = 0.0  # an all-zero row
    codes, scale = quantize_rows(x)
    assert codes.dtype == FP8_DTYPE and codes.shape == x.shape and scale.shape == (rows, 1)
    assert scale.dtype == torch.float32
    back = codes.float() * scale
    assert torch.equal(codes[0].float(), torch.zeros(cols))
    for r in range(1, rows):
        amax = float(x[r].abs().max())
        assert float(codes[r].float().abs().max()) == FP8_MAX  # the row's largest element uses the full range
        # 3 mantissa bits: relative error <= 2^-4 for normal codes; subnormals (|code| < 2^-6) have step 2^-9
        bound = torch.maximum(x[r].abs() * 2.0**-4, torch.full_like(x[r], 2.0**-10 * amax / FP8_MAX))
        assert torch.all((back[r] - x[r]).abs() <= bound * 1.0001 + 1e-30)


def test_quantize_rows_rejects_other_ranks():
    with pytest.raises(ValueError, match=r"\(M, K\)"):
        quantize_rows(torch.ones(2, 3, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_matches_the_linear_layer_within_fp8_error(dtype):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48).to(dtype)
    x = torch.randn(3, 5, 64, dtype=dtype)
    fp8 = Fp8Linear.from_linear(linear)
    with torch.no_grad():
        y, want = fp8(x), linear(x)
    assert y.shape == (3, 5, 48) and y.dtype == dtype
    rel = float((y.float() - want.float()).norm() / want.float().norm())
    assert 1e-4 < rel < 6e-2  # quantised (not the float path) and within e4m3's error
    assert fp8.weight_codes.dtype == FP8_DTYPE and fp8.weight_scale.shape == (1, 48)
    without_bias = Fp8Linear.from_linear(nn.Linear(64, 48, bias=False).to(dtype))
    assert without_bias.bias is None
    with pytest.raises(ValueError, match=r"\(\.\.\., 64\)"):
        fp8(torch.randn(2, 32, dtype=dtype))


class _MaskedBias(nn.Linear):
    """Like DINOv3's LinearKMaskedBias: the bias is masked in forward (the stored bias is not the one used)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("bias_mask", (torch.arange(self.out_features) % 3 != 1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias * self.bias_mask)


class _NotAffine(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))


@pytest.fixture
def _no_grad():
    with torch.no_grad():
        yield


@pytest.mark.usefixtures("_no_grad")
def test_convert_replaces_fitting_linears_with_their_effective_bias_and_keeps_the_others():
    torch.manual_seed(1)
    net = nn.Sequential(_MaskedBias(32, 48), nn.GELU(), nn.Linear(48, 20), _NotAffine(20, 32), nn.Linear(32, 16))
    with torch.no_grad():
        net[0].bias.fill_(3.0)
    x = torch.randn(7, 32)
    want = net(x)
    replaced = convert_linears_to_fp8(net)
    assert replaced == ["0", "4"]  # 48 -> 20 and 20 -> 32 are not multiples of 16
    assert isinstance(net[0], Fp8Linear) and type(net[2]) is nn.Linear and type(net[3]) is _NotAffine
    assert isinstance(net[4], Fp8Linear)
    torch.testing.assert_close(net[0].bias, torch.tensor([3.0, 0.0, 3.0] * 16))
    rel = float((net(x) - want).norm() / want.norm())
    assert 0 < rel < 6e-2
    chain = nn.Sequential(nn.Linear(32, 32), _NotAffine(32, 32))
    assert convert_linears_to_fp8(chain) == ["0"] and type(chain[1]) is _NotAffine
    assert convert_linears_to_fp8(nn.Sequential(nn.Conv2d(3, 4, 1))) == []


def test_fp8_linear_rejects_misaligned_weights():
    with pytest.raises(ValueError, match="multiples of 16"):
        Fp8Linear(torch.randn(48, 20))
    with pytest.raises(ValueError, match="bias"):
        Fp8Linear(torch.randn(48, 32), torch.randn(47))


@pytest.mark.usefixtures("_no_grad")
def test_convert_takes_only_the_layers_include_names():
    net = nn.Sequential(nn.Linear(32, 32), nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32)))
    replaced = convert_linears_to_fp8(net, include=lambda name: name.startswith("1."))
    assert replaced == ["1.0", "1.1"]
    assert type(net[0]) is nn.Linear and isinstance(net[1][0], Fp8Linear) and isinstance(net[1][1], Fp8Linear)
