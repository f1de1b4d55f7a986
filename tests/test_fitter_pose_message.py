"""`pose_message` and `joint_rotations_and_positions`: one kinematics pass gives what the two separate
calls give (the fitter's `pose` joint rotations and root pose)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from streamer.body.model import BodyModel


@pytest.fixture(scope="module")
def body():
    from streamer.body.anny_model import AnnyBody

    return AnnyBody()


def test_one_pass_matches_separate_calls(body):
    gen = torch.Generator().manual_seed(3)
    x = body.default_params(3)
    x[:, :3] += 0.5 * torch.randn(3, 3, generator=gen)
    x[:, body.groups["pose"]] += 0.3 * torch.randn(3, body.groups["pose"].stop - 6, generator=gen)
    x[:, body.groups["shape:height"]] = torch.tensor([[0.2], [0.5], [0.9]])
    with torch.no_grad():
        rotations, positions = body.joint_rotations_and_positions(x)
        fallback = BodyModel.joint_rotations_and_positions(body, x)
        assert rotations.shape == (3, len(body.joint_names), 3, 3) and positions.shape == (3, len(body.joint_names), 3)
        torch.testing.assert_close(rotations, body.joint_rotations(x), rtol=0, atol=0)
        torch.testing.assert_close(positions, body.joint_positions(x), rtol=0, atol=0)
        torch.testing.assert_close(rotations, fallback[0], rtol=0, atol=0)
        torch.testing.assert_close(positions, fallback[1], rtol=0, atol=0)
    # the root rotation is the global axis-angle turned into Anny's frame: a proper rotation, moved by it
    det = torch.linalg.det(rotations[:, 0])
    np.testing.assert_allclose(det.numpy(), 1.0, atol=1e-5)
    assert float((rotations[0, 0] - rotations[1, 0]).abs().max()) > 0.1


def test_remembered_kinematics_follow_the_parameters(body):
    """The one-slot memo of the last kinematics pass never serves another parameter vector's poses."""
    from streamer.body.anny_model import AnnyBody

    fresh = AnnyBody()
    x1 = body.default_params(1)
    x2 = x1.clone()
    x2[0, body.groups["pose:lowerarm01.L"]] = torch.tensor([0.0, 0.0, 1.2])
    with torch.no_grad():
        for x in (x1, x2, x1, x2):
            body.keypoints(x)  # leaves x's node poses remembered
            torch.testing.assert_close(body.joint_rotations_and_positions(x)[1], fresh.joint_positions(x.clone()))
        moved = body.keypoints(x2) - body.keypoints(x1)
    assert float(moved.norm(dim=-1).max()) > 0.05
    x3 = x1.clone().requires_grad_(True)  # with gradients: computed afresh, differentiable
    body.keypoints(x3).sum().backward()
    assert x3.grad is not None and float(x3.grad.abs().sum()) > 0


def test_unit_quaternions_equal_romas():
    """The pose message's NumPy quaternions are roma's `rotmat_to_unitquat` (XYZW), half-turns included."""
    import roma

    from nodes.fitter import unit_quaternions

    rotations = roma.random_rotmat(200, dtype=torch.float64, device="cpu")
    rotations[0] = torch.eye(3, dtype=torch.float64)
    for i, diagonal in enumerate(([1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0])):
        rotations[1 + i] = torch.diag(torch.tensor(diagonal, dtype=torch.float64))
    quats = unit_quaternions(rotations.numpy())
    np.testing.assert_allclose(quats, roma.rotmat_to_unitquat(rotations).numpy(), rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(quats, axis=1), 1.0, atol=1e-15)
