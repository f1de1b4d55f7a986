"""A STAND-IN for MHR's TorchScript `mhr_model.pt` (NOT the MHR model: MHR's assets are gated) whose root
rotation is a real rotation, so frame conversions and rigid starts can be checked exactly.

Same call contract as MHR: `(identity (B, 45), model_params (B, 204), expr (B, 72))` -> `(vertices (B, 70, 3) cm,
skeleton state (B, 4, 8) [translation cm, quaternion xyzw, scale])`, MHR's native y-up frame. Toy maths: a fixed
rough person (70 vertices, 1.8 m tall, root joint 92.4 cm up) deformed linearly by the pose, scale and identity
inputs, then turned about the root joint by `model_params[3:6]` (XYZ Euler, R = Rz Ry Rx, as MHR). Its head
buffers map the 70 vertices one to one onto the 70 keypoints. `stand_in_assets(folder)` writes the two files the
fitter's `body_model = "mhr"` loads (`assets/mhr_model.pt`, `model.ckpt`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from streamer.body.mhr_params import hand_model_params_to_cont

__all__ = ["RigidRootMhrStandIn", "StandInCharacter", "stand_in_assets"]

ROOT_CM = (0.0, 92.4, 0.0)


def _euler_to_quat_xyzw(euler: torch.Tensor) -> torch.Tensor:
    """(B, 3) XYZ Euler -> (B, 4) quaternion xyzw of Rz @ Ry @ Rx."""
    half = euler * 0.5
    cx, cy, cz = torch.cos(half[:, 0]), torch.cos(half[:, 1]), torch.cos(half[:, 2])
    sx, sy, sz = torch.sin(half[:, 0]), torch.sin(half[:, 1]), torch.sin(half[:, 2])
    x = sx * cy * cz - cx * sy * sz
    y = cx * sy * cz + sx * cy * sz
    z = cx * cy * sz - sx * sy * cz
    w = cx * cy * cz + sx * sy * sz
    return torch.stack([x, y, z, w], dim=-1)


def _euler_to_rotmat(euler: torch.Tensor) -> torch.Tensor:
    cx, cy, cz = torch.cos(euler[:, 0]), torch.cos(euler[:, 1]), torch.cos(euler[:, 2])
    sx, sy, sz = torch.sin(euler[:, 0]), torch.sin(euler[:, 1]), torch.sin(euler[:, 2])
    row0 = torch.stack([cy * cz, sx * sy * cz - cx * sz, cx * sy * cz + sx * sz], dim=-1)
    row1 = torch.stack([cy * sz, sx * sy * sz + cx * cz, cx * sy * sz - sx * cz], dim=-1)
    row2 = torch.stack([-sy, sx * cy, cx * cy], dim=-1)
    return torch.stack([row0, row1, row2], dim=-2)


class _Skeleton(torch.nn.Module):
    def __init__(self, parents: list[int]) -> None:
        super().__init__()
        self.joint_parents = parents


class StandInCharacter(torch.nn.Module):
    """`character_torch.skeleton.joint_parents`, the piece of MHR's module tree the loader reads."""

    def __init__(self, parents: list[int]) -> None:
        super().__init__()
        self.skeleton = _Skeleton(parents)


class RigidRootMhrStandIn(torch.nn.Module):
    """STAND-IN for mhr_model.pt (see the module docstring): linear body, real root rotation."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        rest = torch.rand(70, 3, generator=gen) * torch.tensor([50.0, 175.0, 30.0]) + torch.tensor([-25.0, 5.0, -15.0])
        self.register_buffer("rest", rest)  # cm, y up
        self.register_buffer("from_pose", torch.randn(198, 210, generator=gen) * 1.0)  # model_params[6:] -> cm
        self.register_buffer("from_identity", torch.randn(45, 210, generator=gen) * 0.5)
        self.register_buffer("root", torch.tensor(ROOT_CM))
        self.register_buffer("legs", torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [10.0, -5.0, 0.0],
                                                   [-10.0, -5.0, 0.0]]))
        self.character_torch = StandInCharacter([-1, 0, 1, 1])
        self.names = ["body_world", "root", "l_upleg", "r_upleg"]

    @torch.jit.export
    def get_joint_names(self) -> list[str]:
        return self.names

    def forward(self, identity: torch.Tensor, model_params: torch.Tensor, expr: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, dtype = model_params.shape[0], model_params.dtype
        root = self.root.to(dtype)
        local = self.rest.to(dtype) + (model_params[:, 6:] @ self.from_pose.to(dtype)
                                       + identity @ self.from_identity.to(dtype)
                                       + expr.sum(-1, keepdim=True) * 0.0).reshape(batch, 70, 3)
        rot = _euler_to_rotmat(model_params[:, 3:6])  # (B, 3, 3)
        verts = torch.einsum("bij,bnj->bni", rot, local - root) + root
        joints = torch.einsum("bij,nj->bni", rot, self.legs.to(dtype)) + root
        joints[:, 0] = 0.0
        quat = _euler_to_quat_xyzw(model_params[:, 3:6])[:, None].expand(batch, 4, 4).clone()
        quat[:, 0] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=dtype)
        return verts, torch.cat([joints, quat, torch.ones(batch, 4, 1, dtype=dtype)], dim=-1)


def stand_in_assets(folder: Path) -> Path:
    """Write `assets/mhr_model.pt` (the stand-in, TorchScript) and `model.ckpt` (head buffers) into `folder`."""
    folder = Path(folder)
    (folder / "assets").mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(RigidRootMhrStandIn()), str(folder / "assets" / "mhr_model.pt"))
    gen = torch.Generator().manual_seed(8)
    mapping = torch.zeros(308, 74)
    mapping[:70, :70] = torch.eye(70)
    state = {
        "head_pose.scale_mean": torch.randn(68, generator=gen) * 0.05,
        "head_pose.scale_comps": torch.randn(28, 68, generator=gen) * 0.05,
        "head_pose.hand_pose_mean": hand_model_params_to_cont(torch.zeros(27)),
        "head_pose.hand_pose_comps": torch.eye(54) * 0.1,
        "head_pose.hand_joint_idxs_left": torch.arange(95, 122),
        "head_pose.hand_joint_idxs_right": torch.arange(68, 95),
        "head_pose.keypoint_mapping": mapping,
    }
    torch.save({"state_dict": state}, folder / "model.ckpt")
    return folder
