"""`streamer bench estimator` argument parsing and its layer-scale stress check (the benchmark itself needs a CUDA
GPU and upstream SAM-3D Body)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from streamer.capture.sam3d_fast import FastBodyEstimator
from tests.test_sam3d_fast import StandInSam3dBody, _images, _requests
from tools.bench_estimator import (AGREEMENT_KEYS, _layer_scale_stress, _relative_errors, main,
                                   parse_process_configs)


def test_process_configs_parse_processes_batch_and_graph_suffix():
    assert parse_process_configs("4x32, 8x16g,,1x8g") == [(4, 32, False), (8, 16, True), (1, 8, True)]
    assert parse_process_configs("") == []


@pytest.mark.parametrize("text", ["4", "4x", "x8", "0x8", "4x0", "4x8q", "axb"])
def test_process_configs_reject_malformed_entries_naming_them(text):
    with pytest.raises(SystemExit, match="--processes"):
        parse_process_configs(text)


def test_gpu_configs_are_checked_before_any_gpu_work_and_named():
    with pytest.raises(SystemExit, match="--gpus: P and B must be >= 1"):
        main(["--gpus", "2x0"])
    with pytest.raises(SystemExit, match="--gpus: expected"):
        main(["--gpus", "two"])
    with pytest.raises(SystemExit, match="--cpu-threads: expected >= 0"):
        main(["--gpus", "2x8", "--cpu-threads", "-1"])


class _LayerScaled(nn.Module):
    """A backbone with a DINOv3-style LayerScale (gamma at its init value 1e-5) on a linear branch."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, kernel_size=8, stride=8)
        self.branch = nn.Linear(16, 16)
        self.gamma = nn.Parameter(torch.full((16,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).permute(0, 2, 3, 1)
        return (tokens + self.gamma * self.branch(tokens) * 40).permute(0, 3, 1, 2)


class _WithVertices(StandInSam3dBody):
    def forward_decoder(self, image_embeddings, batch, prompt=None):
        out = super().forward_decoder(image_embeddings, batch, prompt)
        out["pred_vertices"] = out["pred_keypoints_3d"] * 2
        return out


def test_layer_scale_stress_shows_what_a_tiny_layer_scale_hides_and_restores_it():
    """STAND-IN model (CPU): at gamma 1e-5 an FP8 branch barely moves the outputs; the stress check sets gamma to
    1, where FP8 rounding shows, and leaves the model's gamma as it was."""
    torch.set_grad_enabled(False)
    try:
        model = _WithVertices().eval()
        model.backbone = _LayerScaled()
        images, requests = _images(), _requests()
        exact = FastBodyEstimator(model, cuda_graphs=False).estimate(images, requests)
        fp8 = FastBodyEstimator(model, cuda_graphs=False, precision="fp8").estimate(images, requests)
        hidden = _relative_errors(exact, fp8)
        stress = _layer_scale_stress(model, images, requests, "fp8")
        assert torch.equal(model.backbone.gamma, torch.full((16,), 1e-5))
        assert stress["embedding_rel_err"] > 1e-3 and stress["max_rel_err"] > 10 * hidden["pred_keypoints_3d"]
        assert stress["max_rel_err"] == max(stress[key] for key in AGREEMENT_KEYS)
        model.backbone = nn.Conv2d(3, 16, kernel_size=8, stride=8)
        assert "skipped" in _layer_scale_stress(model, images, requests, "bf16")
    finally:
        torch.set_grad_enabled(True)


def test_a_precision_agrees_only_if_its_stress_check_does_unless_that_was_skipped():
    from tools.bench_estimator import AGREEMENT_TOLERANCE, agrees_under_stress

    assert agrees_under_stress(True, {"max_rel_err": AGREEMENT_TOLERANCE / 2})
    assert not agrees_under_stress(True, {"max_rel_err": 0.18})  # FP8 under unit layer scales
    assert not agrees_under_stress(True, {"pred_vertices": 0.1})  # no summary: not shown to agree
    assert not agrees_under_stress(False, {"max_rel_err": 0.0})  # its own check failed
    assert agrees_under_stress(True, {"skipped": "released weights"})  # --checkpoint: the own check decides
    assert not agrees_under_stress(False, {"skipped": "released weights"})
