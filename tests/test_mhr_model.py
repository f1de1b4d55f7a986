"""MHR backend: contract tests on four real SAM-3D Body outputs, and the load/call path on a
TorchScript STAND-IN (a tiny linear model with MHR's exact call signature, NOT the MHR model)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from streamer.body import mhr70
from streamer.body.mhr_model import (
    MhrAssetsMissing,
    MhrBody,
    MhrPaths,
    load_head_buffers,
)
from streamer.body.mhr_params import (
    assemble_model_params,
    camera_from_mhr_points,
    camera_from_mhr_rotations,
    euler_xyz_to_rotmat,
    hand_cont_to_model_params,
    hand_model_params_to_cont,
    hands_to_model_params,
    scales_from_scale_params,
)

REPO = Path(__file__).resolve().parents[1]
from tests.mhr_stand_in import StandInCharacter
from tests.shared_data import SAM3D_OUTPUTS as OUTPUTS
from tests.shared_data import SHARED

REFERENCE = SHARED.parent / "reference"
# Hand slots of the 204 (sam3d_body_pose_133_layout.json: body 62-88 right hand, 89-115 left, +6).
RIGHT_SLOTS, LEFT_SLOTS = torch.arange(68, 95), torch.arange(95, 122)


@pytest.fixture(scope="module")
def outputs() -> list[dict[str, np.ndarray]]:
    files = sorted(OUTPUTS.glob("img_subj0[0-3].npz"))
    if len(files) != 4:
        pytest.skip(f"shared test data not found at {OUTPUTS} (see ../shared/reference/data.md)")
    return [dict(np.load(f, allow_pickle=False)) for f in files]


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


@pytest.mark.data
def test_output_layout(outputs) -> None:
    for out in outputs:
        assert out["body_pose_params"].shape == (133,) and out["hand_pose_params"].shape == (108,)
        assert out["shape_params"].shape == (45,) and out["scale_params"].shape == (28,)
        assert out["mhr_model_params"].shape == (204,) and out["pred_keypoints_3d"].shape == (70, 3)
        assert not out["body_pose_params"][62:116].any() and not out["body_pose_params"][130:133].any()
        assert not out["mhr_model_params"][0:3].any()


@pytest.mark.data
def test_rebuild_204_from_133_and_hands_and_scales(outputs) -> None:
    for out in outputs:
        mp = _t(out["mhr_model_params"])
        rebuilt = assemble_model_params(_t(out["global_rot"]), _t(out["body_pose_params"]), mp[LEFT_SLOTS],
                                        mp[RIGHT_SLOTS], LEFT_SLOTS, RIGHT_SLOTS, mp[136:])
        assert torch.equal(rebuilt, mp)
        # The hand values differ from the (zeroed) body slots: they really come from the hand vector.
        assert float(mp[68:122].abs().max()) > 0.05
    with pytest.raises(ValueError, match="27 indices in \\[68, 122\\)"):
        assemble_model_params(torch.zeros(3), torch.zeros(133), torch.zeros(27), torch.zeros(27),
                              torch.arange(27), RIGHT_SLOTS, torch.zeros(68))


@pytest.mark.data
def test_hand_decoding_round_trip_on_real_hand_values(outputs) -> None:
    for out in outputs:
        for slots in (LEFT_SLOTS, RIGHT_SLOTS):
            values = _t(out["mhr_model_params"])[slots]
            assert torch.allclose(hand_cont_to_model_params(hand_model_params_to_cont(values)), values, atol=1e-9)
    # With identity PCA and zero mean the 108 map straight through the decoder.
    hands = torch.randn(2, 108, dtype=torch.float64)
    left, right = hands_to_model_params(hands, torch.zeros(54, dtype=torch.float64), torch.eye(54, dtype=torch.float64))
    assert torch.allclose(right, hand_cont_to_model_params(hands[:, 54:]))
    assert scales_from_scale_params(torch.ones(28), torch.zeros(68), torch.ones(28, 68)).eq(28).all()


@pytest.mark.data
def test_root_rotation_is_extrinsic_xyz_euler(outputs) -> None:
    for out in outputs:
        assert torch.allclose(euler_xyz_to_rotmat(_t(out["global_rot"])), _t(out["pred_global_rots"][1]), atol=1e-6)


@pytest.mark.data
def test_camera_frame_flip_of_rotations(outputs) -> None:
    names = json.loads((REFERENCE / "mhr_joint_names_127.json").read_text())
    parent, child = names.index("l_upleg"), names.index("l_lowleg")

    def local_directions(flip: bool) -> np.ndarray:
        dirs = []
        for out in outputs:
            rot = _t(out["pred_global_rots"][parent])
            rot = camera_from_mhr_rotations(rot[None])[0] if flip else rot
            bone = _t(out["pred_joint_coords"][child] - out["pred_joint_coords"][parent])
            d = rot.T @ bone
            dirs.append((d / d.norm()).numpy())
        return np.array(dirs)

    assert np.ptp(local_directions(True), axis=0).max() < 2e-3
    assert np.ptp(local_directions(False), axis=0).max() > 0.05


@pytest.mark.data
def test_keypoints_are_camera_frame_metres(outputs) -> None:
    # pred_keypoints_2d = f * X / Z + centre with X = pred_keypoints_3d + pred_cam_t (the frame MhrBody returns).
    for out in outputs:
        points = out["pred_keypoints_3d"] + out["pred_cam_t"]
        pixels = 2535.27 * points[:, :2] / points[:, 2:] + np.array([960.0, 445.0])
        assert np.abs(pixels - out["pred_keypoints_2d"]).max() < 0.05
        assert 1.0 < np.linalg.norm(points[mhr70.index_of("nose")] - points[mhr70.index_of("left-ankle")]) < 2.0
    assert torch.allclose(camera_from_mhr_points(torch.tensor([[0.0, 92.4, 10.0]])), torch.tensor([[0.0, -0.924, -0.1]]))


# ---------------------------------------------------------------- TorchScript STAND-IN (not MHR)


class MhrStandIn(torch.nn.Module):
    """STAND-IN for mhr_model.pt: MHR's call signature and outputs, linear toy maths, 6 vertices, 4 joints."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("verts_from_params", torch.randn(204, 18, generator=gen) * 0.5)
        self.register_buffer("verts_from_identity", torch.randn(45, 18, generator=gen))
        self.register_buffer("joints_from_params", torch.randn(204, 12, generator=gen) * 0.5)
        self.register_buffer("base", torch.randn(30, generator=gen) * 50)
        self.character_torch = StandInCharacter([-1, 0, 1, 1])
        self.names = ["body_world", "root", "l_upleg", "r_upleg"]

    @torch.jit.export
    def get_joint_names(self) -> list[str]:
        return self.names

    def forward(self, identity: torch.Tensor, model_params: torch.Tensor, expr: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = model_params.shape[0]
        verts = (self.base[:18] + model_params @ self.verts_from_params + identity @ self.verts_from_identity
                 + expr.sum(-1, keepdim=True) * 0.0).reshape(batch, 6, 3)
        joints = (self.base[18:] + model_params @ self.joints_from_params).reshape(batch, 4, 3)
        quat = torch.cat([model_params[:, 3:6] * 0.5, torch.ones(batch, 1)], dim=-1)
        quat = (quat / torch.sqrt((quat * quat).sum(-1, keepdim=True)))[:, None].expand(batch, 4, 4)
        return verts, torch.cat([joints, quat, torch.ones(batch, 4, 1)], dim=-1)


def _stand_in_folder(folder: Path) -> None:
    (folder / "assets").mkdir(parents=True)
    torch.jit.save(torch.jit.script(MhrStandIn()), str(folder / "assets" / "mhr_model.pt"))
    gen = torch.Generator().manual_seed(1)
    mapping = torch.rand(308, 10, generator=gen)
    state = {
        "head_pose.scale_mean": torch.randn(68, generator=gen) * 0.1,
        "head_pose.scale_comps": torch.randn(28, 68, generator=gen) * 0.1,
        "head_pose.hand_pose_mean": hand_model_params_to_cont(torch.zeros(27)),
        "head_pose.hand_pose_comps": torch.eye(54) * 0.5,
        "head_pose.hand_joint_idxs_left": LEFT_SLOTS.flip(0),
        "head_pose.hand_joint_idxs_right": RIGHT_SLOTS.flip(0),
        "head_pose.keypoint_mapping": mapping / mapping.sum(1, keepdim=True),
        "backbone.other": torch.zeros(3),
    }
    torch.save({"state_dict": state}, folder / "model.ckpt")


def test_missing_assets_say_what_to_download(tmp_path) -> None:
    with pytest.raises(MhrAssetsMissing, match="STREAMER_SAM3D_CHECKPOINT is not set.*facebook/sam-3d-body"):
        MhrPaths.resolve(environ={})
    with pytest.raises(MhrAssetsMissing, match="mhr_model.pt"):
        MhrPaths.resolve(environ={"STREAMER_SAM3D_CHECKPOINT": str(tmp_path)})


def test_stand_in_load_and_call_path(tmp_path) -> None:
    _stand_in_folder(tmp_path)
    paths = MhrPaths.resolve(environ={"STREAMER_SAM3D_CHECKPOINT": str(tmp_path)})
    body = MhrBody(paths, dtype=torch.float32)
    assert body.num_params == 320 and body.joint_names[2] == "l_upleg" and body.joint_parents == (-1, 0, 1, 1)
    gen = torch.Generator().manual_seed(2)
    params = body.default_params(3) + 0.1 * torch.randn(3, 320, generator=gen)
    kp = body.keypoints(params)
    assert kp.shape == (3, 70, 3) and torch.isfinite(kp).all()
    # Same as doing 3DB's steps by hand on the stand-in's outputs: regressor, cm -> m, flip, + cam_t.
    stand_in = torch.jit.load(str(paths.model))
    verts, skel = stand_in(params[:, body.groups["shape"]], body.model_params(params), torch.zeros(3, 72))
    regressor = load_head_buffers(paths.checkpoint)["keypoint_mapping"][:70]
    expected = torch.einsum("kn,bnc->bkc", regressor, torch.cat([verts, skel[..., :3]], 1)) / 100
    expected = expected * torch.tensor([1.0, -1.0, -1.0]) + params[:, None, 3:6]
    assert torch.allclose(kp, expected, atol=1e-5)
    # Gradients reach every movable dim; dead inputs (hand slots of the 133, jaw) are not movable.
    p = params.clone().requires_grad_(True)
    body.keypoints(p).sum().backward()
    dead = [i for i in body.movable.nonzero().squeeze(1).tolist() if float(p.grad[:, i].abs().max()) == 0.0]
    assert dead == []
    body0 = body.groups["body_pose"].start
    assert not body.movable[body0 + 62: body0 + 116].any() and not body.movable[body0 + 130: body0 + 133].any()
    rotations = body.joint_rotations(params)
    assert rotations.shape == (3, 4, 3, 3)
    assert torch.allclose(rotations @ rotations.transpose(-1, -2), torch.eye(3).expand(3, 4, 3, 3), atol=1e-5)
    assert body.joint_positions(params).shape == (3, 4, 3)


def test_head_buffers_missing_key_is_named(tmp_path) -> None:
    torch.save({"head_pose.scale_mean": torch.zeros(68)}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="scale_comps"):
        load_head_buffers(tmp_path / "bad.ckpt")
