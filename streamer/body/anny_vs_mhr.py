"""How far Anny's MHR-70 points are from MHR's own: fit Anny to real SAM-3D Body MHR-70 outputs.

For each output (`pred_keypoints_3d`, camera frame) the points are turned into the stage frame
(Z up: world = (x, z, -y)), then AnnyBody's pose, shape, global rotation and translation are fitted
to all 70 points (Adam, then L-BFGS). What remains per point is the part of the mapping that no Anny
pose or shape can absorb: definition differences (surface vs joint, landmark placement) plus the
two models' different proportions. `python -m streamer.body.anny_vs_mhr [DIR]` prints the table
(per group: median and max over points and outputs, mm).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from streamer.body import mhr70
from streamer.body.anny_model import AnnyBody

__all__ = ["GROUPS", "camera_to_stage", "fit_anny_to_points", "residual_table"]

GROUPS = mhr70.GROUPS


def camera_to_stage(points: np.ndarray) -> np.ndarray:
    """(..., 3) OpenCV camera axes (x right, y down, z forward) -> stage axes (Z up): (x, z, -y)."""
    return np.stack([points[..., 0], points[..., 2], -points[..., 1]], axis=-1)


def fit_anny_to_points(body: AnnyBody, targets: np.ndarray, *, adam_steps: int = 300, lbfgs_steps: int = 60,
                       pose_prior: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Fit AnnyBody to (B, 70, 3) target points (stage frame, metres); returns (params, keypoints)."""
    target = torch.as_tensor(targets, dtype=body.dtype, device=body.device)
    params = body.default_params(len(target))
    hips = target[:, [9, 10]].mean(1)
    params[:, body.groups["transl"]] = hips
    saved = body.movable.clone()
    body.movable[body.groups["shape"]] = True
    x = params.clone().requires_grad_(True)
    pose = body.groups["pose"]
    shape = body.groups["shape"]

    def loss_fn() -> torch.Tensor:
        kp = body.keypoints(x)
        data = ((kp - target) ** 2).sum(-1).mean()
        return data + pose_prior * (x[:, pose] ** 2).sum(-1).mean()

    try:
        optimizer = torch.optim.Adam([x], lr=0.03)
        for _ in range(adam_steps):
            optimizer.zero_grad()
            loss_fn().backward()
            optimizer.step()
            with torch.no_grad():
                x[:, shape] = x[:, shape].clamp(0.0, 1.0)
        lbfgs = torch.optim.LBFGS([x], lr=0.5, max_iter=lbfgs_steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            lbfgs.zero_grad()
            value = loss_fn()
            value.backward()
            return value

        lbfgs.step(closure)
        with torch.no_grad():
            x[:, shape] = x[:, shape].clamp(0.0, 1.0)
            keypoints = body.keypoints(x)
    finally:
        body.movable.copy_(saved)
    return x.detach().cpu().numpy(), keypoints.cpu().numpy()


def residual_table(residuals_m: np.ndarray) -> list[tuple[str, float, float]]:
    """(B, 70) residuals, metres -> [(group, median mm, max mm)]."""
    return [(name, 1e3 * float(np.median(residuals_m[:, idx])), 1e3 * float(residuals_m[:, idx].max()))
            for name, idx in GROUPS.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sam3d_body_outputs"
    parser.add_argument("folder", type=Path, nargs="?", default=default, help="folder of img_subj*.npz")
    args = parser.parse_args(argv)
    files = sorted(args.folder.glob("*.npz"))
    if not files:
        print(f"no .npz outputs in {args.folder}", file=sys.stderr)
        return 1
    points = np.stack([camera_to_stage(np.load(f, allow_pickle=False)["pred_keypoints_3d"]) for f in files])
    body = AnnyBody(dtype=torch.float64)
    _, fitted = fit_anny_to_points(body, points)
    residuals = np.linalg.norm(fitted - points, axis=-1)
    print(f"Anny fitted to {len(files)} SAM-3D Body outputs: residual per MHR-70 group (mm)")
    print(f"{'group':<26} {'median':>7} {'max':>7}")
    for name, median, worst in residual_table(residuals):
        print(f"{name:<26} {median:>7.0f} {worst:>7.0f}")
    print(f"{'all 70':<26} {1e3 * np.median(residuals):>7.0f} {1e3 * residuals.max():>7.0f}")
    assert residuals.shape[1] == mhr70.NUM_KEYPOINTS
    return 0


if __name__ == "__main__":
    sys.exit(main())
