"""`BodyModel`: the one interface the fitter, the synthetic stage and the avatar use.

A body model maps a flat parameter vector (B, P) to differentiable MHR-70 keypoints
(B, 70, 3) in metres in the model's world frame, and to local joint rotations. Backends:
Anny (embedded default, `streamer.body.anny_model.AnnyBody`: world = stage frame, Z up) and MHR
(`streamer.body.mhr_model.MhrBody`: SAM-3D Body's camera frame, when the user has the checkpoint).

Parameter layout is the backend's, described by `groups` (name -> slice into P). Every
backend has at least the groups "global_rot" (3, radians: axis-angle for Anny; XYZ Euler for MHR,
exactly as SAM-3D Body emits it), "transl" (3, metres), "pose" and "shape". `movable` says which
dims a fitter may change by default; dims that are not movable may get no gradient.
"""
from __future__ import annotations

import abc

import torch

__all__ = ["BodyModel"]


class BodyModel(abc.ABC):
    """Abstract body model. Subclasses set the attributes below in `__init__`."""

    name: str  # "anny", "mhr": the `Pose.body_model` id
    num_params: int  # P
    groups: dict[str, slice]  # named slices of the parameter vector
    movable: torch.Tensor  # (P,) bool: dims a fitter may move by default
    keypoint_defined: torch.Tensor  # (70,) bool: MHR-70 points this backend defines
    joint_names: tuple[str, ...]  # J joints, for joint_rotations
    joint_parents: tuple[int, ...]  # (J,) parent index, -1 for the root
    device: torch.device
    dtype: torch.dtype

    @abc.abstractmethod
    def default_params(self, batch: int = 1) -> torch.Tensor:
        """(B, P) rest pose, average shape, at the origin."""

    @abc.abstractmethod
    def keypoints(self, params: torch.Tensor) -> torch.Tensor:
        """(B, P) -> (B, 70, 3) MHR-70 keypoints, metres, model world frame; differentiable.

        Points the backend does not define (`~keypoint_defined`) are returned as NaN."""

    @abc.abstractmethod
    def joint_rotations(self, params: torch.Tensor) -> torch.Tensor:
        """(B, P) -> (B, J, 3, 3) local joint rotations (parent_from_joint)."""

    @abc.abstractmethod
    def joint_positions(self, params: torch.Tensor) -> torch.Tensor:
        """(B, P) -> (B, J, 3) joint centres, metres, model world frame."""

    def joint_rotations_and_positions(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P) -> ((B, J, 3, 3) `joint_rotations`, (B, J, 3) `joint_positions`). Backends whose
        kinematics give both at once override this with one pass."""
        return self.joint_rotations(params), self.joint_positions(params)
