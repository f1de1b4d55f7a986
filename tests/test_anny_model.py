"""AnnyBody: MHR-70 points from Anny, exact against Anny's own forward pass, gradients, cache."""
from __future__ import annotations

import roma
import pytest
import torch

from streamer.body import anny_model, mhr70
from streamer.body.anny_model import AnnyBody


@pytest.fixture(scope="module")
def body() -> AnnyBody:
    return AnnyBody(dtype=torch.float64)


def _random_params(body: AnnyBody, batch: int, seed: int, pose_scale: float = 0.3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    params = body.default_params(batch)
    params[:, body.groups["global_rot"]] = torch.randn(batch, 3, generator=gen, dtype=params.dtype) * 0.5
    params[:, body.groups["transl"]] += torch.randn(batch, 3, generator=gen, dtype=params.dtype)
    pose = body.groups["pose"]
    params[:, pose] = torch.randn(batch, pose.stop - pose.start, generator=gen, dtype=params.dtype) * pose_scale
    params[:, body.groups["shape"]] = torch.rand(batch, 6, generator=gen, dtype=params.dtype)
    return params


def _dist(kp: torch.Tensor, a: str, b: str) -> torch.Tensor:
    return (kp[..., mhr70.index_of(a), :] - kp[..., mhr70.index_of(b), :]).norm(dim=-1)


def test_all_points_present_and_plausible(body: AnnyBody) -> None:
    kp = body.keypoints(body.default_params(1))[0]
    assert kp.shape == (70, 3) and torch.isfinite(kp).all() and bool(body.keypoint_defined.all())
    # Standing on the floor, Z up, about 1.6 m tall (Anny's average body is 1.625 m).
    assert -0.005 < float(kp[:, 2].min()) < 0.05
    assert 1.45 < float(kp[mhr70.index_of("nose"), 2]) < 1.65
    # Facing -Y: the nose is in front of (more negative y than) the ears; left is +X.
    assert kp[mhr70.index_of("nose"), 1] < kp[mhr70.index_of("left-ear"), 1]
    assert kp[mhr70.index_of("left-shoulder"), 0] > 0 > kp[mhr70.index_of("right-shoulder"), 0]
    lengths = {
        ("left-shoulder", "left-elbow"): (0.22, 0.36), ("left-elbow", "left-wrist"): (0.20, 0.30),
        ("left-hip", "left-knee"): (0.33, 0.48), ("left-knee", "left-ankle"): (0.32, 0.46),
        ("left-shoulder", "right-shoulder"): (0.25, 0.42), ("left-hip", "right-hip"): (0.14, 0.30),
        ("left-wrist", "left-middle-tip"): (0.14, 0.22), ("left-index-third-joint", "left-index-tip"): (0.06, 0.11),
        ("left-elbow", "left-olecranon"): (0.015, 0.06), ("left-elbow", "left-cubital-fossa"): (0.015, 0.06),
        ("left-shoulder", "left-acromion"): (0.02, 0.08), ("neck", "nose"): (0.12, 0.25),
    }
    for (a, b), (lo, hi) in lengths.items():
        assert lo < float(_dist(kp, a, b)) < hi, (a, b, float(_dist(kp, a, b)))


def test_limbs_symmetric(body: AnnyBody) -> None:
    kp = body.keypoints(body.default_params(1))[0]
    mirrored = kp[mhr70.FLIP_PERMUTATION] * torch.tensor([-1.0, 1.0, 1.0], dtype=kp.dtype)
    assert float((mirrored - kp).norm(dim=-1).max()) < 0.002
    # Bone lengths stay symmetric under any pose (rigid-ish bones), within skinning slack.
    kp = body.keypoints(_random_params(body, 4, seed=1))
    torso = {0, 1, 2, 3, 4, 5, 6, 9, 10}
    limbs = [(a, b) for a, b in mhr70.LINKS if not (a in torso and b in torso)]
    assert len(limbs) == 54
    for a, b in limbs:
        fa, fb = int(mhr70.FLIP_PERMUTATION[a]), int(mhr70.FLIP_PERMUTATION[b])
        la = (kp[:, a] - kp[:, b]).norm(dim=-1)
        lb = (kp[:, fa] - kp[:, fb]).norm(dim=-1)
        assert float((la - lb).abs().max()) < 0.02 + 0.1 * float(la.max()), (mhr70.NAMES[a], mhr70.NAMES[b])


def test_matches_anny_forward_and_coco_regressor(body: AnnyBody) -> None:
    import anny

    model = anny.Anny()
    regressor = anny.KeypointsRegressor.coco(model)
    params = _random_params(body, 1, seed=2)
    deltas = torch.eye(4, dtype=torch.float64).repeat(1, len(body.joint_names), 1, 1)
    deltas[0, 0, :3, :3] = roma.rotvec_to_rotmat(params[0, 0:3])
    deltas[0, 0, :3, 3] = params[0, 3:6]
    deltas[0, body._posed, :3, :3] = roma.rotvec_to_rotmat(params[0, body.groups["pose"]].reshape(-1, 3))
    out = model(deltas, phenotype_kwargs=params[:, body.groups["shape"]])
    expected = regressor(out)[0]
    index = [mhr70.index_of(anny_model._COCO_TO_MHR[label]) for label in regressor.labels]
    got = body.keypoints(params)[0, index]
    assert float((got - expected).norm(dim=-1).max()) < 1e-6
    heads = body.joint_positions(params)[0]
    assert float((heads - out["bone_poses"][0, :, :3, 3]).norm(dim=-1).max()) < 1e-6
    tip = mhr70.index_of("left-index-first-joint")
    assert float((body.keypoints(params)[0, tip] - heads[body.joint_names.index("finger2-3.L")]).norm()) < 1e-9


def test_gradients_reach_every_movable_dim(body: AnnyBody) -> None:
    params = _random_params(body, 2, seed=3, pose_scale=0.2).requires_grad_(True)
    kp = body.keypoints(params)
    (kp * torch.randn_like(kp)).sum().backward()
    grad = params.grad
    assert torch.isfinite(grad).all()
    moving = body.movable.nonzero().squeeze(1)
    dead = [i for i in moving.tolist() if float(grad[:, i].abs().max()) == 0.0]
    assert dead == [], dead
    assert float(grad[:, ~body.movable].abs().max()) == 0.0  # frozen shape dims get none


def test_analytic_jacobian_matches_autograd(body: AnnyBody) -> None:
    params = _random_params(body, 2, seed=6, pose_scale=0.4)
    keypoints, jac = body.keypoints_and_jacobian(params)
    assert torch.allclose(keypoints, body.keypoints(params), atol=1e-12)
    columns = body.movable.nonzero().squeeze(1)
    shape = body.groups["shape"]
    rigid = columns < shape.start
    for i in range(2):
        expected = torch.autograd.functional.jacobian(lambda x: body.keypoints(x[None])[0], params[i])
        assert torch.allclose(jac[i][..., rigid], expected[..., columns[rigid]], atol=1e-9)
        # Shape columns are forward differences of the exact keypoints; the autograd path leaves out
        # the rest-orientation change (documented), so the two only roughly agree.
        assert float((jac[i][..., ~rigid] - expected[..., columns[~rigid]]).abs().max()) < 0.15
        step = 1e-4
        for c in columns[~rigid].tolist():
            hi, lo = params[i:i + 1].clone(), params[i:i + 1].clone()
            hi[0, c] += step
            lo[0, c] -= step
            central = (body.keypoints(hi) - body.keypoints(lo))[0] / (2 * step)
            assert torch.allclose(jac[i][..., columns.tolist().index(c)], central, atol=1e-3)
    some = torch.tensor([0, 4, body.groups["pose:lowerarm01.L"].start])
    full = body.keypoints_and_jacobian(params, torch.arange(body.num_params))[1]
    assert torch.allclose(body.keypoints_and_jacobian(params, some)[1], full[..., some])


def test_frozen_shape_uses_cached_tables_and_same_values(body: AnnyBody) -> None:
    params = _random_params(body, 3, seed=4)
    fresh = body.keypoints(params.clone().requires_grad_(True))  # shape path with gradients
    shape = body.groups["shape"]
    saved = body.movable.clone()
    try:
        body.movable[shape] = False
        cached = body.keypoints(params)
        assert torch.allclose(fresh, cached, atol=1e-9)
        p = params.clone().requires_grad_(True)
        body.keypoints(p).sum().backward()
        assert float(p.grad[:, shape].abs().max()) == 0.0
        assert float(p.grad[:, body.groups["pose"]].abs().max()) > 0.0
    finally:
        body.movable.copy_(saved)


def test_single_row_numpy_path_equals_the_batched_torch_path(body: AnnyBody) -> None:
    """One row without autograd runs the float64 NumPy kinematics and tables; a batch runs torch."""
    import numpy as np

    params = _random_params(body, 3, seed=8, pose_scale=0.5)
    body.set_keypoint_offsets(np.random.default_rng(0).normal(0.0, 0.02, (70, 3)))
    try:
        batched = (body.keypoints(params), body.bone_poses(params), body.keypoint_frames(params))
        for i in range(3):
            row = params[i:i + 1]
            single = (body.keypoints(row), body.bone_poses(row), body.keypoint_frames(row))
            for b, s in zip(batched, single):
                assert torch.allclose(b[i], s[0], atol=1e-10), float((b[i] - s[0]).abs().max())
            kp, jac = body.keypoints_and_jacobian(row)
            assert torch.allclose(kp[0], batched[0][i], atol=1e-10)
            # the NumPy-in-and-out forms (the fitter's hot path) are the same numbers
            assert np.allclose(body.keypoints_row(row[0].numpy()), batched[0][i].numpy(), atol=1e-10)
            columns = body.movable.nonzero().squeeze(1).numpy()
            kp_row, jac_row = body.keypoints_and_jacobian_row(row[0].numpy(), columns)
            assert np.allclose(kp_row, kp[0].numpy(), atol=1e-12) and np.allclose(jac_row, jac[0].numpy(), atol=1e-12)
    finally:
        body.set_keypoint_offsets(None)


def test_phenotype_coefficients_equal_annys(body: AnnyBody) -> None:
    import numpy as np
    from anny.models.phenotype import make_phenotype_anchors, phenotype_blendshape_weights

    mask = body._t["phenotype_mask"].to(torch.float64)
    projection = torch.as_tensor(body._np["phenotype_projection"])
    anchors = make_phenotype_anchors(torch.float64)
    for shape in np.random.default_rng(2).uniform(-0.3, 1.3, (8, 6)):  # out of range too (clamped)
        expected = phenotype_blendshape_weights(torch.as_tensor(shape)[None], list(anny_model.ANNY_SHAPE_NAMES),
                                                anchors, mask, extrapolate=False) @ projection
        assert np.allclose(body._phenotype_coefficients(shape), expected[0].numpy(), atol=1e-13, rtol=0)


def test_blendshape_sums_interpolate_exactly_within_a_cell(body: AnnyBody) -> None:
    """The row tables' blendshape sums (multilinear in height and proportions within an anchor cell, from
    the cell's corners) equal the coefficients' product with the blendshapes, out of range too (clamped)."""
    import numpy as np

    rng = np.random.default_rng(4)
    for other in rng.uniform(0.0, 1.0, (2, 6)):
        for height, proportions in rng.uniform(-0.2, 1.2, (4, 2)):
            shape = other.copy()
            shape[4:] = height, proportions
            direct = body._phenotype_coefficients(shape) @ body._np_blendshapes
            assert np.allclose(body._blendshape_sums(shape), direct, atol=1e-13, rtol=0)


def test_joint_rotations_are_local_rotations(body: AnnyBody) -> None:
    params = _random_params(body, 2, seed=5)
    local = body.joint_rotations(params)
    assert local.shape == (2, len(body.joint_names), 3, 3)
    eye = torch.eye(3, dtype=local.dtype)
    assert torch.allclose(local @ local.transpose(-1, -2), eye.expand_as(local), atol=1e-9)
    poses = body.bone_poses(params)
    world = poses[..., :3, :3]
    parents = [max(p, 0) for p in body.joint_parents]
    assert torch.allclose(world[:, parents[5]] @ local[:, 5], world[:, 5], atol=1e-9)


def test_bad_shape_is_a_clear_error(body: AnnyBody) -> None:
    with pytest.raises(ValueError, match="expected \\(B, 162\\)"):
        body.keypoints(torch.zeros(1, 10, dtype=torch.float64))


def test_table_cache_keyed_by_content(tmp_path, monkeypatch) -> None:
    first = AnnyBody(cache_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len([f for f in files if f.endswith(".safetensors")]) == 1

    def fail(*args, **kwargs):
        raise AssertionError("tables rebuilt although cached")

    monkeypatch.setattr(anny_model, "build_anny_tables", fail)
    second = AnnyBody(cache_dir=tmp_path)
    p = first.default_params(1)
    assert torch.equal(first.keypoints(p), second.keypoints(p))
    # Other settings are another key: a folder that exists is not enough.
    with pytest.raises(AssertionError, match="rebuilt"):
        AnnyBody(cache_dir=tmp_path, posed_bones=anny_model.POSED_BONES[:-1])


def test_mhr70_groups_partition_the_layout() -> None:
    everything = sorted(int(i) for idx in mhr70.GROUPS.values() for i in idx)
    assert everything == list(range(70))
    assert all(mhr70.NAMES[i].endswith("-tip") for i in mhr70.FINGERTIPS)
    assert all("joint" in mhr70.NAMES[i] for i in mhr70.FINGER_JOINTS)


@pytest.mark.slow
def test_processes_starting_together_build_the_tables_once(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout); "
            "from streamer.body.anny_model import AnnyBody; AnnyBody(cache_dir=sys.argv[1])")
    repo = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=repo, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sum(out.count("building them once") for out in outputs) == 1, outputs
    assert not list(tmp_path.glob("*.tmp"))
