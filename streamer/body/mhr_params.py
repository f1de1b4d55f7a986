"""Pure conversions between SAM-3D Body's outputs and the MHR model's inputs and frames.

Facts (../shared/reference/sam3d-body-and-mhr.md §4, §6, §7):
- MHR takes 204 model parameters: [0:3] root translation (3DB: `global_trans * 10`, always 0),
  [3:6] root rotation = `global_rot` (XYZ Euler, radians: R = Rz(g2) Ry(g1) Rx(g0)), [6:136] =
  `body_pose_params[:130]` (the 133 minus the jaw 130-132) with the hand slots 68-121 overwritten
  from the 108 hand parameters, [136:204] 68 scales = `scale_mean + scale_params(28) @ scale_comps`.
- Hands: 108 = left 54, right 54 in a PCA space; `hand_pose_mean + p @ hand_pose_comps` is the
  54-D continuous hand vector, decoded joint by joint (3-DoF as 6D, 1-DoF as (sin, cos)) into 27
  Euler values, scattered at the checkpoint's `hand_joint_idxs_left/right` (absolute indices into the 204).
- MHR outputs centimetres in its y-up frame; SAM-3D Body divides by 100 and negates y and z
  ("camera system difference"): camera frame = OpenCV (x right, y down, z forward). Rotations are
  not flipped by 3DB: camera-frame rotation = F @ R with F = diag(1, -1, -1).

All functions take and return torch tensors with leading batch dims, so they are differentiable.
"""
from __future__ import annotations

import torch

__all__ = [
    "BODY_POSE_DIMS",
    "HAND_DOFS",
    "HAND_PARAMS",
    "JAW_SLICE",
    "MODEL_PARAMS",
    "MODEL_HAND_SLICE",
    "SCALE_PARAMS",
    "SHAPE_PARAMS",
    "assemble_model_params",
    "camera_from_mhr_points",
    "camera_from_mhr_rotations",
    "euler_xyz_to_rotmat",
    "hand_cont_to_model_params",
    "hand_model_params_to_cont",
    "hands_to_model_params",
    "rotate_global_rot",
    "scales_from_scale_params",
]

BODY_POSE_DIMS = 133
HAND_PARAMS = 108
SHAPE_PARAMS = 45
SCALE_PARAMS = 28
MODEL_PARAMS = 204
NUM_SCALES = 68
JAW_SLICE = slice(130, 133)  # in the 133: zeroed and sliced off before MHR
BODY_HAND_SLICE = slice(62, 116)  # in the 133: zeroed by 3DB, filled from the hand parameters
MODEL_HAND_SLICE = slice(68, 122)  # the same slots in the 204
HAND_DOFS = (3, 1, 1, 3, 1, 1, 3, 1, 1, 3, 1, 1, 2, 3, 1, 1)  # per hand joint, 27 in all

_CONT_3DOF = torch.tensor([k == 3 for k in HAND_DOFS for _ in range(2 * k)])
_CONT_1DOF = torch.tensor([k in (1, 2) for k in HAND_DOFS for _ in range(2 * k)])
_MODEL_3DOF = torch.tensor([k == 3 for k in HAND_DOFS for _ in range(k)])
_MODEL_1DOF = torch.tensor([k in (1, 2) for k in HAND_DOFS for _ in range(k)])
_FLIP = torch.tensor([1.0, -1.0, -1.0])


def euler_xyz_to_rotmat(euler: torch.Tensor) -> torch.Tensor:
    """(..., 3) XYZ Euler (rx, ry, rz), radians -> (..., 3, 3) = Rz(rz) @ Ry(ry) @ Rx(rx) (MHR's convention)."""
    cx, cy, cz = torch.cos(euler).unbind(-1)
    sx, sy, sz = torch.sin(euler).unbind(-1)
    row0 = torch.stack([cy * cz, sx * sy * cz - cx * sz, cx * sy * cz + sx * sz], dim=-1)
    row1 = torch.stack([cy * sz, sx * sy * sz + cx * cz, cx * sy * sz - sx * cz], dim=-1)
    row2 = torch.stack([-sy, sx * cy, cx * cy], dim=-1)
    return torch.stack([row0, row1, row2], dim=-2)


def _rotmat_to_euler_xyz(matrix: torch.Tensor) -> torch.Tensor:
    sy = torch.sqrt(matrix[..., 0, 0] ** 2 + matrix[..., 1, 0] ** 2)
    return torch.stack([torch.atan2(matrix[..., 2, 1], matrix[..., 2, 2]), torch.atan2(-matrix[..., 2, 0], sy),
                        torch.atan2(matrix[..., 1, 0], matrix[..., 0, 0])], dim=-1)


def _rot6d_to_rotmat(six: torch.Tensor) -> torch.Tensor:
    """(..., 6) two columns -> (..., 3, 3) by Gram-Schmidt, as 3DB's batch9Dfrom6D (columns x, y, z)."""
    x = torch.nn.functional.normalize(six[..., :3], dim=-1)
    z = torch.nn.functional.normalize(torch.linalg.cross(x, six[..., 3:]), dim=-1)
    y = torch.linalg.cross(z, x)
    return torch.stack([x, y, z], dim=-1)


def hand_cont_to_model_params(hand_cont: torch.Tensor) -> torch.Tensor:
    """(..., 54) continuous hand vector -> (..., 27) Euler hand parameters, ordered by joint then XYZ."""
    if hand_cont.shape[-1] != 54:
        raise ValueError(f"hand_cont: expected (..., 54), got {tuple(hand_cont.shape)}")
    threes = _rotmat_to_euler_xyz(_rot6d_to_rotmat(hand_cont[..., _CONT_3DOF].unflatten(-1, (-1, 6))))
    ones = hand_cont[..., _CONT_1DOF].unflatten(-1, (-1, 2))
    out = hand_cont.new_zeros(*hand_cont.shape[:-1], 27)
    out[..., _MODEL_3DOF] = threes.flatten(-2)
    out[..., _MODEL_1DOF] = torch.atan2(ones[..., 0], ones[..., 1])
    return out


def hand_model_params_to_cont(hand_params: torch.Tensor) -> torch.Tensor:
    """(..., 27) Euler hand parameters -> (..., 54) continuous vector (inverse of `hand_cont_to_model_params`)."""
    if hand_params.shape[-1] != 27:
        raise ValueError(f"hand_params: expected (..., 27), got {tuple(hand_params.shape)}")
    rot = euler_xyz_to_rotmat(hand_params[..., _MODEL_3DOF].unflatten(-1, (-1, 3)))
    six = torch.cat([rot[..., :, 0], rot[..., :, 1]], dim=-1)
    angles = hand_params[..., _MODEL_1DOF]
    out = hand_params.new_zeros(*hand_params.shape[:-1], 54)
    out[..., _CONT_3DOF] = six.flatten(-2)
    out[..., _CONT_1DOF] = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)
    return out


def hands_to_model_params(hand_params: torch.Tensor, hand_pose_mean: torch.Tensor, hand_pose_comps: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 108) SAM-3D Body hand parameters -> (left (..., 27), right (..., 27)) Euler hand parameters."""
    if hand_params.shape[-1] != HAND_PARAMS:
        raise ValueError(f"hand_pose_params: expected (..., 108), got {tuple(hand_params.shape)}")
    left, right = hand_params[..., :54], hand_params[..., 54:]
    return (hand_cont_to_model_params(hand_pose_mean + left @ hand_pose_comps),
            hand_cont_to_model_params(hand_pose_mean + right @ hand_pose_comps))


def scales_from_scale_params(scale_params: torch.Tensor, scale_mean: torch.Tensor, scale_comps: torch.Tensor
                             ) -> torch.Tensor:
    """(..., 28) scale PCA coefficients -> (..., 68) MHR scale parameters."""
    if scale_params.shape[-1] != SCALE_PARAMS:
        raise ValueError(f"scale_params: expected (..., 28), got {tuple(scale_params.shape)}")
    return scale_mean + scale_params @ scale_comps


def assemble_model_params(global_rot: torch.Tensor, body_pose: torch.Tensor, left_hand: torch.Tensor,
                          right_hand: torch.Tensor, hand_joint_idxs_left: torch.Tensor,
                          hand_joint_idxs_right: torch.Tensor, scales: torch.Tensor,
                          global_trans: torch.Tensor | None = None) -> torch.Tensor:
    """The (..., 204) MHR model parameters, exactly as 3DB's `mhr_forward` builds them.

    global_rot (..., 3) XYZ Euler; body_pose (..., 133) (jaw sliced off here); left/right_hand (..., 27)
    Euler hand values; hand_joint_idxs_*: (27,) absolute indices into the 204; scales (..., 68);
    global_trans (..., 3) metres or None (3DB: always 0; stored x10).
    """
    if body_pose.shape[-1] != BODY_POSE_DIMS:
        raise ValueError(f"body_pose_params: expected (..., 133), got {tuple(body_pose.shape)}")
    if scales.shape[-1] != NUM_SCALES:
        raise ValueError(f"scales: expected (..., 68), got {tuple(scales.shape)}")
    for name, idx in (("hand_joint_idxs_left", hand_joint_idxs_left), ("hand_joint_idxs_right", hand_joint_idxs_right)):
        if idx.shape != (27,) or int(idx.min()) < MODEL_HAND_SLICE.start or int(idx.max()) >= MODEL_HAND_SLICE.stop:
            raise ValueError(f"{name}: expected 27 indices in [68, 122) of the 204 model parameters, got {idx.tolist()}")
    trans = torch.zeros_like(global_rot) if global_trans is None else global_trans * 10
    full = torch.cat([trans, global_rot, body_pose[..., : JAW_SLICE.start], scales], dim=-1)
    full = full.index_copy(-1, hand_joint_idxs_left.long(), left_hand)
    return full.index_copy(-1, hand_joint_idxs_right.long(), right_hand)


def camera_from_mhr_points(points_cm: torch.Tensor) -> torch.Tensor:
    """(..., 3) MHR-native points, cm, y-up -> 3DB camera-frame axes, metres (y and z negated)."""
    return points_cm / 100.0 * _FLIP.to(points_cm)


def rotate_global_rot(global_rot: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """(..., 3) XYZ-Euler root rotation of a body -> the same body turned by `rotation` (..., 3, 3).

    `rotation` acts in the frame the body's points come out in (camera axes, F = diag(1, -1, -1) from
    MHR's): F @ R_new = rotation @ F @ R, so R_new = F @ rotation @ F @ R. E.g. camera -> world with
    rotation = world_from_camera (the rig's R transposed), or a rigid alignment of the keypoints."""
    flip = _FLIP.to(rotation)
    turned = flip[:, None] * rotation * flip[None, :]  # F @ rotation @ F
    return _rotmat_to_euler_xyz(turned @ euler_xyz_to_rotmat(global_rot.to(rotation)))


def camera_from_mhr_rotations(rotations: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) MHR-native global rotations -> camera frame: F @ R, F = diag(1, -1, -1)."""
    return _FLIP.to(rotations)[:, None] * rotations
