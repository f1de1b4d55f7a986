"""A small differentiable TEST body (a stick-figure kinematic chain) implementing `BodyModel`.

This is a test model for the fitter's unit tests, not a real body: 16 joints, axis-angle
pose, two shape dims (log height scale, leg proportion), a 3-dim "jaw" that only moves the
nose (so frozen dims can be tested). It defines the 23 MHR-70 body points plus wrists,
acromions and neck; every other MHR-70 point is NaN. Accuracy checks use the real Anny body.
"""
from __future__ import annotations

import numpy as np
import torch

from streamer.body import mhr70
from streamer.body.model import BodyModel

__all__ = ["ChainBody", "random_poses"]

# joint: (name, parent, offset from parent at rest, metres; Z up, body faces -Y)
_JOINTS = (
    ("pelvis", -1, (0.0, 0.0, 0.95)),
    ("spine", 0, (0.0, 0.0, 0.25)),
    ("neck", 1, (0.0, 0.0, 0.28)),
    ("head", 2, (0.0, 0.0, 0.10)),
    ("l_shoulder", 2, (0.18, 0.0, -0.02)),
    ("l_elbow", 4, (0.28, 0.0, 0.0)),
    ("l_wrist", 5, (0.25, 0.0, 0.0)),
    ("r_shoulder", 2, (-0.18, 0.0, -0.02)),
    ("r_elbow", 7, (-0.28, 0.0, 0.0)),
    ("r_wrist", 8, (-0.25, 0.0, 0.0)),
    ("l_hip", 0, (0.10, 0.0, -0.05)),
    ("l_knee", 10, (0.0, 0.0, -0.42)),
    ("l_ankle", 11, (0.0, 0.0, -0.42)),
    ("r_hip", 0, (-0.10, 0.0, -0.05)),
    ("r_knee", 13, (0.0, 0.0, -0.42)),
    ("r_ankle", 14, (0.0, 0.0, -0.42)),
)
_LEG_JOINTS = {"l_knee", "l_ankle", "r_knee", "r_ankle"}
# MHR-70 keypoint: (joint, offset in the joint frame, metres)
_KEYPOINTS = {
    "nose": ("head", (0.0, -0.10, 0.05)), "left-eye": ("head", (0.035, -0.08, 0.09)),
    "right-eye": ("head", (-0.035, -0.08, 0.09)), "left-ear": ("head", (0.08, 0.0, 0.07)),
    "right-ear": ("head", (-0.08, 0.0, 0.07)), "left-shoulder": ("l_shoulder", (0.0, 0.0, 0.0)),
    "right-shoulder": ("r_shoulder", (0.0, 0.0, 0.0)), "left-elbow": ("l_elbow", (0.0, 0.0, 0.0)),
    "right-elbow": ("r_elbow", (0.0, 0.0, 0.0)), "left-hip": ("l_hip", (0.0, 0.0, 0.0)),
    "right-hip": ("r_hip", (0.0, 0.0, 0.0)), "left-knee": ("l_knee", (0.0, 0.0, 0.0)),
    "right-knee": ("r_knee", (0.0, 0.0, 0.0)), "left-ankle": ("l_ankle", (0.0, 0.0, 0.0)),
    "right-ankle": ("r_ankle", (0.0, 0.0, 0.0)), "left-big-toe-tip": ("l_ankle", (0.02, -0.17, -0.07)),
    "left-small-toe-tip": ("l_ankle", (0.06, -0.14, -0.07)), "left-heel": ("l_ankle", (0.0, 0.05, -0.08)),
    "right-big-toe-tip": ("r_ankle", (-0.02, -0.17, -0.07)), "right-small-toe-tip": ("r_ankle", (-0.06, -0.14, -0.07)),
    "right-heel": ("r_ankle", (0.0, 0.05, -0.08)), "left-wrist": ("l_wrist", (0.0, 0.0, 0.0)),
    "right-wrist": ("r_wrist", (0.0, 0.0, 0.0)), "left-acromion": ("l_shoulder", (-0.03, 0.0, 0.04)),
    "right-acromion": ("r_shoulder", (0.03, 0.0, 0.04)), "neck": ("neck", (0.0, 0.0, 0.0)),
}


def _rotvec_to_rotmat(rotvec: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle radians -> (..., 3, 3); smooth at zero (safe under jacfwd)."""
    theta2 = (rotvec * rotvec).sum(-1, keepdim=True)
    theta = torch.sqrt(theta2 + 1e-20)
    small = theta2 < 1e-8
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta2 + 1e-20))
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*rotvec.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)
    return eye + a[..., None] * k + b[..., None] * (k @ k)


class ChainBody(BodyModel):
    """Test body: a differentiable 16-joint chain with MHR-70 body points (see module docstring)."""

    def __init__(self, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> None:
        self.name = "test-chain"
        self.device, self.dtype = torch.device(device), dtype
        n_pose = 3 * (len(_JOINTS) - 1)
        self.groups = {
            "global_rot": slice(0, 3), "transl": slice(3, 6), "pose": slice(6, 6 + n_pose),
            "jaw": slice(6 + n_pose, 9 + n_pose), "shape": slice(9 + n_pose, 11 + n_pose),
        }
        self.num_params = 11 + n_pose
        self.movable = torch.ones(self.num_params, dtype=torch.bool)
        self.movable[self.groups["jaw"]] = False
        self.joint_names = tuple(j[0] for j in _JOINTS)
        self.joint_parents = tuple(j[1] for j in _JOINTS)
        self._offsets = torch.tensor([j[2] for j in _JOINTS], dtype=dtype, device=self.device)
        self._leg = torch.tensor([j[0] in _LEG_JOINTS for j in _JOINTS], device=self.device)
        index = {name: i for i, name in enumerate(self.joint_names)}
        kp_names = list(_KEYPOINTS)
        self._kp_index = torch.tensor([mhr70.index_of(n) for n in kp_names], device=self.device)
        self._kp_joint = [index[_KEYPOINTS[n][0]] for n in kp_names]
        self._kp_offset = torch.tensor([_KEYPOINTS[n][1] for n in kp_names], dtype=dtype, device=self.device)
        self.keypoint_defined = torch.zeros(mhr70.NUM_KEYPOINTS, dtype=torch.bool)
        self.keypoint_defined[self._kp_index] = True

    def wrist_dims(self) -> list[int]:
        """Parameter dims of the wrist rotations: no defined keypoint depends on them."""
        start = self.groups["pose"].start
        return [start + 3 * (self.joint_names.index(n) - 1) + i for n in ("l_wrist", "r_wrist") for i in range(3)]

    def default_params(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, self.num_params, dtype=self.dtype, device=self.device)

    def _forward(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, P) -> local rotations (B, J, 3, 3), world rotations (B, J, 3, 3), positions (B, J, 3)."""
        g = self.groups
        batch = params.shape[0]
        rotvecs = torch.cat([params[:, g["global_rot"]], params[:, g["pose"]]], 1).reshape(batch, -1, 3)
        local = _rotvec_to_rotmat(rotvecs)
        shape = params[:, g["shape"]]
        scale = torch.exp(shape[:, :1])[:, :, None]  # (B, 1, 1)
        leg = torch.where(self._leg[None, :, None], 1 + shape[:, 1:2, None], torch.ones_like(scale))
        offsets = self._offsets[None] * scale * leg  # (B, J, 3)
        world_r, world_p = [], []
        for j, parent in enumerate(self.joint_parents):
            if parent < 0:
                world_r.append(local[:, j])
                world_p.append(offsets[:, j] + params[:, g["transl"]])
            else:
                world_r.append(world_r[parent] @ local[:, j])
                world_p.append(world_p[parent] + (world_r[parent] @ offsets[:, j, :, None])[..., 0])
        return local, torch.stack(world_r, 1), torch.stack(world_p, 1)

    def keypoints(self, params: torch.Tensor) -> torch.Tensor:
        _, world_r, world_p = self._forward(params)
        scale = torch.exp(params[:, self.groups["shape"]][:, :1])[:, :, None]
        offsets = self._kp_offset[None] * scale
        jaw = params[:, self.groups["jaw"]]
        offsets = offsets + torch.cat([jaw[:, None], torch.zeros_like(offsets[:, 1:])], 1)  # jaw moves the nose
        joints = self._kp_joint
        pts = world_p[:, joints] + (world_r[:, joints] @ offsets[..., None])[..., 0]
        out = torch.full((params.shape[0], mhr70.NUM_KEYPOINTS, 3), float("nan"), dtype=params.dtype, device=params.device)
        return out.index_copy(1, self._kp_index, pts)

    def joint_rotations(self, params: torch.Tensor) -> torch.Tensor:
        return self._forward(params)[0]

    def joint_positions(self, params: torch.Tensor) -> torch.Tensor:
        return self._forward(params)[2]


def random_poses(model: ChainBody, n: int, rng: np.random.Generator, pose_std: float = 0.3) -> torch.Tensor:
    """(n, P) random test poses: random heading, position, limb angles, shape."""
    params = model.default_params(n).cpu().numpy()
    g = model.groups
    params[:, g["global_rot"]] = np.array([0, 0, 1.0]) * rng.uniform(-np.pi, np.pi, (n, 1))
    params[:, g["transl"]] = rng.uniform(-1, 1, (n, 3)) * [1, 1, 0.05]
    params[:, g["pose"]] = rng.normal(0, pose_std, (n, g["pose"].stop - g["pose"].start))
    params[:, g["shape"]] = rng.normal(0, 0.05, (n, 2))
    return torch.as_tensor(params, dtype=model.dtype)


def test_chain_body_is_a_sound_body_model():
    model = ChainBody()
    params = random_poses(model, 4, np.random.default_rng(0))
    kp = model.keypoints(params)
    assert kp.shape == (4, 70, 3)
    assert torch.isfinite(kp[:, model.keypoint_defined]).all() and torch.isnan(kp[:, ~model.keypoint_defined]).all()
    rest = model.keypoints(model.default_params())[0]
    assert abs(float(rest[mhr70.index_of("left-ankle"), 2]) - 0.06) < 1e-9  # feet near the floor at rest
    # every movable dim but the wrist twists moves some defined point (jacfwd works through the model)
    jac = torch.func.jacfwd(lambda p: model.keypoints(p[None])[0, model.keypoint_defined])(params[0])
    inert = set(np.flatnonzero(jac.abs().sum((0, 1)).numpy() == 0))
    assert inert == set(model.wrist_dims())
    assert (jac.abs().sum((0, 1))[model.groups["jaw"]] > 0).all()
    rots = model.joint_rotations(params)
    assert torch.allclose(rots @ rots.transpose(-1, -2), torch.eye(3, dtype=rots.dtype).expand_as(rots), atol=1e-9)


def walk_sequence(model: ChainBody, n: int, fps: float = 30.0, speed_mps: float = 1.2) -> np.ndarray:
    """(n, P) a walk along +X for the test body: legs and arms swing at 1 Hz, slight heading sway."""
    t = np.arange(n) / fps
    params = np.zeros((n, model.num_params))
    g = model.groups
    params[:, g["global_rot"]] = np.stack([np.zeros(n), np.zeros(n), -np.pi / 2 + 0.1 * np.sin(2 * np.pi * 0.5 * t)], 1)
    params[:, g["transl"]] = np.stack([speed_mps * t, 0.05 * np.sin(2 * np.pi * 0.5 * t), 0.02 * np.sin(4 * np.pi * t)], 1)
    swing = 0.5 * np.sin(2 * np.pi * 1.0 * t)

    def set_joint(name: str, axis: int, values: np.ndarray) -> None:
        params[:, g["pose"].start + 3 * (model.joint_names.index(name) - 1) + axis] = values

    set_joint("l_hip", 0, swing)
    set_joint("r_hip", 0, -swing)
    set_joint("l_knee", 0, -0.4 * (1 + np.sin(2 * np.pi * t)))
    set_joint("r_knee", 0, -0.4 * (1 - np.sin(2 * np.pi * t)))
    set_joint("l_shoulder", 1, 1.2 + 0 * t)
    set_joint("r_shoulder", 1, -1.2 + 0 * t)
    set_joint("l_shoulder", 0, -swing)
    set_joint("r_shoulder", 0, swing)
    set_joint("l_elbow", 0, 0.3 + 0.2 * swing)
    set_joint("r_elbow", 0, 0.3 - 0.2 * swing)
    set_joint("head", 2, 0.2 * np.sin(2 * np.pi * 0.3 * t))
    params[:, g["shape"]] = [0.05, -0.03]
    return params
