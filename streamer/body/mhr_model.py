"""`MhrBody`: the MHR body model (what SAM-3D Body predicts) behind the `BodyModel` interface.

Needs two files the project cannot ship (SAM-3D Body weights are gated, see
../shared/reference/sam3d-body-and-mhr.md §8-9):
- the TorchScript MHR model `mhr_model.pt` (LOD1; `assets/mhr_model.pt` of the HF repos
  `facebook/sam-3d-body-dinov3` / `-vith`, or `mhr_model.pt` in the `facebookresearch/MHR` release
  `assets.zip` v1.0.1), called as `mhr(identity (B, 45), model_params (B, 204), expr (B, 72))`
  -> `(vertices (B, V, 3) cm, skeleton state (B, J, 8) [translation cm, quaternion xyzw, scale])`;
- the SAM-3D Body checkpoint `model.ckpt` for the MHR head buffers that are not in MHR's assets:
  `head_pose.{scale_mean, scale_comps, hand_pose_mean, hand_pose_comps, hand_joint_idxs_left,
  hand_joint_idxs_right, keypoint_mapping}` (the 308 x (V + J) keypoint regressor; MHR-70 = first 70 rows).
  A `.safetensors` file with these keys (prefix optional) also works and avoids unpickling.

Paths: `MhrPaths.resolve(model=..., checkpoint=...)`, else the environment variables
`STREAMER_MHR_MODEL` (the .pt) and `STREAMER_SAM3D_CHECKPOINT` (the checkpoint file or its folder,
which then also supplies `assets/mhr_model.pt`). Missing files raise `MhrAssetsMissing` saying what to
download and where.

Parameter vector (P = 320), exactly as SAM-3D Body emits them per person:

| group | dims | meaning |
|---|---|---|
| `global_rot` | 3 | root rotation, XYZ Euler radians, MHR frame (3DB `global_rot`; not axis-angle) |
| `transl` | 3 | metres, camera frame, added after the frame flip (3DB `pred_cam_t`) |
| `body_pose` | 133 | 3DB `body_pose_params`; the hand dims 62-115 are ignored (hands come from `hand_pose`), jaw 130-132 sliced off |
| `hand_pose` | 108 | 3DB `hand_pose_params` (left 54, right 54, PCA space) |
| `shape` | 45 | 3DB `shape_params` (identity blendshapes) |
| `scale` | 28 | 3DB `scale_params` (mapped to MHR's 68 scales) |

`pose` = body_pose + hand_pose. Keypoints are SAM-3D Body's `pred_keypoints_3d + pred_cam_t`:
metres, camera frame (OpenCV axes). `movable`: everything except the hand dims 62-115 and jaw of
`body_pose` (dead inputs) and `shape`/`scale` (per-person constants, fitted separately).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamer.body import mhr70
from streamer.body.model import BodyModel
from streamer.body.mhr_params import (
    BODY_HAND_SLICE,
    BODY_POSE_DIMS,
    HAND_PARAMS,
    JAW_SLICE,
    SCALE_PARAMS,
    SHAPE_PARAMS,
    assemble_model_params,
    camera_from_mhr_points,
    camera_from_mhr_rotations,
    hands_to_model_params,
    rotate_global_rot,
    scales_from_scale_params,
)

__all__ = ["ESTIMATOR_KEYS", "HEAD_BUFFER_NAMES", "MhrAssetsMissing", "MhrBody", "MhrPaths", "load_head_buffers"]

logger = logging.getLogger(__name__)

ENV_MODEL = "STREAMER_MHR_MODEL"
ENV_CHECKPOINT = "STREAMER_SAM3D_CHECKPOINT"
HEAD_BUFFER_NAMES = ("scale_mean", "scale_comps", "hand_pose_mean", "hand_pose_comps", "hand_joint_idxs_left",
                     "hand_joint_idxs_right", "keypoint_mapping")
NUM_EXPRESSION = 72
# parameter group -> key of SAM-3D Body's parameters in `Person2D.params` (streamer.capture.sam3d.PARAM_KEYS)
ESTIMATOR_KEYS = {"global_rot": "global_rot", "transl": "cam_t", "body_pose": "body_pose", "hand_pose": "hand",
                  "shape": "shape", "scale": "scale"}
_HOWTO = (
    "MHR needs the SAM-3D Body checkpoint (gated: request access to the Hugging Face repo "
    "facebook/sam-3d-body-dinov3 or facebook/sam-3d-body-vith, then download model.ckpt and "
    "assets/mhr_model.pt into one folder) and point {env_ckpt} at that folder (or {env_model} at "
    "mhr_model.pt and {env_ckpt} at model.ckpt). mhr_model.pt also ships in the facebookresearch/MHR "
    "GitHub release v1.0.1 assets.zip; the keypoint regressor and hand/scale PCA are only in model.ckpt."
).format(env_ckpt=ENV_CHECKPOINT, env_model=ENV_MODEL)


class MhrAssetsMissing(FileNotFoundError):
    """The MHR model or the SAM-3D Body checkpoint is not where the settings point."""


@dataclass(frozen=True)
class MhrPaths:
    model: Path  # TorchScript mhr_model.pt
    checkpoint: Path  # model.ckpt (torch) or a .safetensors of the head buffers

    @classmethod
    def resolve(cls, model: str | Path | None = None, checkpoint: str | Path | None = None,
                environ: dict[str, str] | None = None) -> MhrPaths:
        """Paths from the arguments, else from STREAMER_MHR_MODEL / STREAMER_SAM3D_CHECKPOINT."""
        env = os.environ if environ is None else environ
        checkpoint = checkpoint or env.get(ENV_CHECKPOINT)
        model = model or env.get(ENV_MODEL)
        if checkpoint is None:
            raise MhrAssetsMissing(f"no SAM-3D Body checkpoint given and {ENV_CHECKPOINT} is not set. " + _HOWTO)
        checkpoint = Path(checkpoint)
        if checkpoint.is_dir():
            folder = checkpoint
            checkpoint = folder / "model.ckpt"
            model = model or folder / "assets" / "mhr_model.pt"
        elif model is None:
            model = checkpoint.parent / "assets" / "mhr_model.pt"
        model = Path(model)
        for what, path in (("MHR TorchScript model", model), ("SAM-3D Body checkpoint", checkpoint)):
            if not path.is_file():
                raise MhrAssetsMissing(f"{what} not found at {path}. " + _HOWTO)
        return cls(model=model, checkpoint=checkpoint)


def load_head_buffers(path: Path) -> dict[str, torch.Tensor]:
    """The MHR-head buffers (`HEAD_BUFFER_NAMES`) from a SAM-3D Body checkpoint or a .safetensors file.

    Keys may carry a prefix (`head_pose.`); a checkpoint is read with `torch.load(weights_only=True)`
    (no arbitrary unpickling); a Lightning-style {"state_dict": ...} wrapper is unwrapped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling refusal is reported the same way
            raise ValueError(f"{path}: cannot read as a weights-only torch checkpoint ({exc})") from exc
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    out = {}
    for name in HEAD_BUFFER_NAMES:
        keys = [k for k in state if k == name or k.endswith("head_pose." + name)]
        if not keys:
            keys = [k for k in state if k.endswith("." + name) and "hand" not in k.split(".")[0]]
        if not keys:
            raise ValueError(f"{path}: no tensor {name!r} (looked for 'head_pose.{name}')")
        out[name] = state[sorted(keys, key=len)[0]]
    if out["keypoint_mapping"].ndim != 2 or out["keypoint_mapping"].shape[0] < mhr70.NUM_KEYPOINTS:
        raise ValueError(f"{path}: keypoint_mapping must be (308, V + J), got {tuple(out['keypoint_mapping'].shape)}")
    return out


class MhrBody(BodyModel):
    """MHR through its TorchScript model (see the module docstring for files, layout and frame).

    paths: from `MhrPaths.resolve()`; mhr: an already loaded TorchScript module (tests, stand-ins).
    """

    name = "mhr"

    def __init__(self, paths: MhrPaths | None = None, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, mhr: torch.nn.Module | None = None,
                 buffers: dict[str, torch.Tensor] | None = None) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        if mhr is None or buffers is None:
            paths = paths or MhrPaths.resolve()
            if mhr is None:
                logger.info("loading MHR TorchScript model %s", paths.model)
                mhr = torch.jit.load(str(paths.model), map_location=self.device)
            if buffers is None:
                buffers = load_head_buffers(paths.checkpoint)
        self._mhr = mhr
        b = {k: v.to(self.device) for k, v in buffers.items()}
        self._b = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in b.items()}
        self._regressor = self._b["keypoint_mapping"][: mhr70.NUM_KEYPOINTS]  # (70, V + J)
        parents = getattr(getattr(getattr(mhr, "character_torch", None), "skeleton", None), "joint_parents", None)
        names = mhr.get_joint_names() if hasattr(mhr, "get_joint_names") else None
        sizes = [3, 3, BODY_POSE_DIMS, HAND_PARAMS, SHAPE_PARAMS, SCALE_PARAMS]
        starts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self.groups = {name: slice(starts[i], starts[i + 1]) for i, name in
                       enumerate(("global_rot", "transl", "body_pose", "hand_pose", "shape", "scale"))}
        self.groups["pose"] = slice(starts[2], starts[4])
        self.num_params = starts[-1]
        self.movable = torch.ones(self.num_params, dtype=torch.bool, device=self.device)
        body0 = self.groups["body_pose"].start
        self.movable[body0 + BODY_HAND_SLICE.start: body0 + BODY_HAND_SLICE.stop] = False
        self.movable[body0 + JAW_SLICE.start: body0 + JAW_SLICE.stop] = False
        self.movable[self.groups["shape"]] = False
        self.movable[self.groups["scale"]] = False
        self.keypoint_defined = torch.ones(mhr70.NUM_KEYPOINTS, dtype=torch.bool, device=self.device)
        self.joint_parents = tuple(int(p) for p in parents) if parents is not None else ()
        self.joint_names = tuple(names) if names is not None else tuple(f"joint{i}" for i in range(len(self.joint_parents)))

    def default_params(self, batch: int = 1) -> torch.Tensor:
        """(B, 320) zero pose, mean shape and scale, 3 m in front of the camera."""
        params = torch.zeros(batch, self.num_params, device=self.device, dtype=self.dtype)
        params[:, self.groups["transl"].start + 2] = 3.0
        return params

    def params_from_estimator(self, estimate: Mapping[str, np.ndarray]) -> np.ndarray:
        """One person's SAM-3D Body parameters as `Person2D.params` carries them (body_pose (133,), hand (108,),
        shape (45,), scale (28,), global_rot (3,), cam_t (3,); other keys ignored) -> (320,) float64 parameter
        vector of this model, camera frame. Raises ValueError naming the missing, misshapen or non-finite key."""
        out = np.empty(self.num_params)
        for group, key in ESTIMATOR_KEYS.items():
            rows = self.groups[group]
            value = estimate.get(key)
            if value is None:
                raise ValueError(f"estimator parameters lack {key!r} (have {sorted(estimate)})")
            value = np.asarray(value, np.float64)
            if value.shape != (rows.stop - rows.start,):
                raise ValueError(f"estimator parameter {key!r}: expected shape ({rows.stop - rows.start},), "
                                 f"got {value.shape}")
            if not np.isfinite(value).all():
                raise ValueError(f"estimator parameter {key!r}: NaN or infinity")
            out[rows] = value
        return out

    def turn_global_rot(self, global_rot: np.ndarray, rotation: np.ndarray) -> np.ndarray:
        """(3,) XYZ-Euler root rotation of a body turned by `rotation` (3, 3) acting on this model's output
        (camera-axes) points, e.g. camera -> world or a rigid alignment (`mhr_params.rotate_global_rot`)."""
        turned = rotate_global_rot(torch.tensor(np.asarray(global_rot), dtype=torch.float64),
                                   torch.tensor(np.asarray(rotation), dtype=torch.float64))
        return turned.numpy()

    def model_params(self, params: torch.Tensor) -> torch.Tensor:
        """(B, 320) -> (B, 204) the MHR model parameters (3DB's `mhr_model_params`)."""
        if params.ndim != 2 or params.shape[1] != self.num_params:
            raise ValueError(f"params: expected (B, {self.num_params}), got {tuple(params.shape)}")
        g, b = self.groups, self._b
        left, right = hands_to_model_params(params[:, g["hand_pose"]], b["hand_pose_mean"], b["hand_pose_comps"])
        scales = scales_from_scale_params(params[:, g["scale"]], b["scale_mean"], b["scale_comps"])
        return assemble_model_params(params[:, g["global_rot"]], params[:, g["body_pose"]], left, right,
                                     b["hand_joint_idxs_left"], b["hand_joint_idxs_right"], scales)

    def _forward(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(vertices (B, V, 3) cm, skeleton state (B, J, 8)), MHR native frame."""
        model_params = self.model_params(params)
        identity = params[:, self.groups["shape"]]
        expression = params.new_zeros(params.shape[0], NUM_EXPRESSION)
        return self._mhr(identity, model_params, expression)

    def keypoints(self, params: torch.Tensor) -> torch.Tensor:
        """(B, 320) -> (B, 70, 3) MHR-70, metres, camera frame (3DB `pred_keypoints_3d + pred_cam_t`)."""
        vertices, skeleton = self._forward(params)
        points = torch.cat([vertices, skeleton[..., :3]], dim=1)  # (B, V + J, 3) cm
        if points.shape[1] != self._regressor.shape[1]:
            raise ValueError(f"keypoint_mapping expects V + J = {self._regressor.shape[1]} points, "
                             f"the MHR model gives {points.shape[1]}")
        keypoints = torch.einsum("kn,bnc->bkc", self._regressor, points)
        return camera_from_mhr_points(keypoints) + params[:, None, self.groups["transl"]]

    def joint_positions(self, params: torch.Tensor) -> torch.Tensor:
        """(B, 320) -> (B, J, 3) MHR joints, metres, camera frame (3DB `pred_joint_coords + pred_cam_t`)."""
        _, skeleton = self._forward(params)
        return camera_from_mhr_points(skeleton[..., :3]) + params[:, None, self.groups["transl"]]

    def joint_rotations(self, params: torch.Tensor) -> torch.Tensor:
        """(B, 320) -> (B, J, 3, 3) local rotations parent_from_joint (root: camera_from_root)."""
        import roma

        _, skeleton = self._forward(params)
        world = camera_from_mhr_rotations(roma.unitquat_to_rotmat(skeleton[..., 3:7]))
        if not self.joint_parents:
            raise ValueError("the MHR model exposes no joint parents (character_torch.skeleton.joint_parents)")
        parents = torch.tensor([max(p, 0) for p in self.joint_parents], device=world.device)
        local = world[:, parents].transpose(-1, -2) @ world
        roots = torch.tensor([p < 0 for p in self.joint_parents], device=world.device)
        return torch.where(roots[None, :, None, None], world, local)
