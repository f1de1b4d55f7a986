"""`AnnyBody`: the embedded default body model (PyPI `anny`, NAVER; code Apache-2.0, assets CC0).

Frame (model world = stage world): right-handed, Z up, metres. With zero global rotation the body
faces -Y and its left side is at +X (Anny's own axes, unchanged). `transl` is the world position of
Anny's root bone head (the pelvis centre); `default_params` puts the soles of the average body on z = 0.

Parameter vector (P = 162 with the default posed bones), named by `groups`:

| group | dims | meaning |
|---|---|---|
| `global_rot` | 3 | axis-angle of the root bone, radians, world axes |
| `transl` | 3 | root (pelvis) position, metres, world |
| `pose` | 3 per posed bone (150) | axis-angle per bone relative to Anny's reference pose, in world-aligned axes (Anny's "local-ref") |
| `shape` | 6 | Anny phenotypes gender, age, muscle, weight, height, proportions in [0, 1]; 0.5 = average |

Each posed bone also has its own group `pose:<bone>` (e.g. `pose:lowerarm01.L`), and `pose_body`,
`pose_hands` cover the body and finger bones. Posed bones (`POSED_BONES`): spine04..01, neck01,
head; per side clavicle, upperarm01 (shoulder), lowerarm01 (elbow), wrist, upperleg01 (hip),
lowerleg01 (knee), foot (ankle), and the three phalanx bones of each finger. The other 54 Anny bones
(twist bones, toes, metacarpals, eyes, pelvis) keep the reference pose.

`movable` (the dims a fitter moves by default): everything except the shape dims gender, age,
muscle, weight. Shape dims get gradients only while they are marked movable; with every shape dim
frozen (`movable[groups["shape"]] = False`), `keypoints` uses tables cached per shape (the fast path).
The autograd gradient of the shape dims leaves out the (small) change of the rest bone orientations
with the phenotypes (up to ~20 % of it for some points); `keypoints_and_jacobian` is exact: analytic
for rotations and translation, forward differences for shape, no autograd, ~0.6 ms for all 156
rigid columns, ~0.47 ms for the 66 a fitter asks for (only the bones of the asked columns are
differentiated), vs ~6 ms for a batch of 157 forward passes.

## Speed: keypoints without skinning

Linear blend skinning is linear, so a keypoint that is a fixed linear combination of vertices (or a
bone head) is `sum_b T_b @ p_b` with `p_b = sum_v w_v W_vb [x_v; 1]` (W = skin weights, x = rest
vertices). The rest vertices and bone heads are linear in Anny's blendshape coefficients, so the
tables `p` are exactly `p0 + c @ dp`, precomputed once (`build_anny_tables`) and stored in a
content-keyed cache. An evaluation is then: phenotypes -> coefficients -> rest bone frames (only when
the shape changes or needs gradients), forward kinematics of the 104 bones, one small contraction.
The full 13,718-vertex mesh is never skinned. Once the cache exists, construction does not even
build `anny.Anny()` (0.1 s, ~10 MB instead of ~1.4 GB).

One row without autograd (a fitter's every evaluation) runs in float64 NumPy: the 51-node kinematics
(`_row_node_poses`, ~0.11 ms, the last row remembered), the keypoints (`keypoints_row`, NumPy in and
out, ~0.13 ms; ~0.17 ms through `keypoints`, vs ~0.67 ms in torch float32; equal to ~2e-7 m), the
Jacobian (`keypoints_and_jacobian_row`: ~0.47 ms for a fitter's 66 columns, ~0.64 ms for all 156 rigid
ones), and a new shape's tables (`_compute_row_tables`, ~0.9 ms vs ~3.5 ms in torch: the blendshape
sums are interpolated within a phenotype cell, `_blendshape_sums`). Torch on tensors this small is
bound by its per-operation overhead. Batches and autograd run the torch path. Products large enough
for NumPy's BLAS to thread go through torch (`_matmul`), so the work stays on the caller's thread (an
OpenBLAS pool beside torch's spinning OpenMP threads made a fit 20x slower in wall time).

## MHR-70 from Anny (see `MAPPING`)

Residual = distance left after fitting Anny's pose, shape and root to the four real SAM-3D Body
outputs in ../shared/data (`python -m streamer.body.anny_vs_mhr`; median / max over points and
outputs, mm). It bounds how differently the two models define each point (plus proportions no
Anny phenotype reaches); a fit to MHR-70 data should down-weight the worst groups.

| MHR-70 | Anny source | residual median / max, mm |
|---|---|---|
| 0-4 nose, eyes, ears | Anny's COCO keypoint regressor (surface-vertex blends) | 19 / 33 |
| 5-6 shoulders | COCO regressor (MHR: `*_uparm` joint centres) | 37 / 48 |
| 7-8 elbows | COCO regressor | 15 / 31 |
| 41, 62 wrists | COCO regressor wrists (0.6 cm from Anny's `wrist` bone head) | 22 / 32 |
| 9-10 hips | COCO regressor (MHR: `*_upleg` joint centres) | 25 / 74 |
| 11-14 knees, ankles | COCO regressor | 35 / 66, 13 / 23 |
| 15-20 big toe, small toe, heel | COCO-23 regressor feet | 15 / 24 |
| finger third / second / first joints | thumb: `finger1-1/2/3` heads (CMC, MCP, IP); fingers: `fingerN-1/2/3` heads (MCP, PIP, DIP) | 8 / 23 |
| fingertips | mean of the 3 skin vertices of `fingerN-3` furthest along the phalanx | 14 / 23 |
| 63-64 olecranon | mean of 3 skin vertices behind the elbow (against the flexion side) | 27 / 36 |
| 65-66 cubital fossa | mean of 3 skin vertices in front of the elbow (flexion side) | 25 / 41 |
| 67-68 acromion | mean of 3 skin vertices on top of the shoulder | 29 / 34 |
| 69 neck | midpoint of the `clavicle.L/R` heads (base of the neck) | 37 / 51 |

All 70 points: median 13 mm, max 74 mm. Anny's regressor matches its own full mesh forward pass
exactly (tested to 1e-6 m); the table is only about the definitions.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import itertools
import json
import logging
import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import roma
import torch
from scipy.spatial.transform import Rotation

from streamer.body import mhr70
from streamer.body.model import BodyModel

__all__ = [
    "ANNY_SHAPE_NAMES",
    "AnnyBody",
    "MAPPING_VERSION",
    "POSED_BONES",
    "build_anny_tables",
    "default_table_cache_dir",
    "load_or_build_tables",
]

logger = logging.getLogger(__name__)

MAPPING_VERSION = 1  # bump when the MHR-70 mapping or the table layout changes (part of the cache key)
ANNY_SHAPE_NAMES = ("gender", "age", "muscle", "weight", "height", "proportions")
MOVABLE_SHAPE_NAMES = ("height", "proportions")
_SHAPE_CACHE_SIZE = 16  # distinct shapes kept (finite-difference Jacobians perturb the shape dims)

_SIDES = ("L", "R")
_BODY_BONES = (
    "spine04", "spine03", "spine02", "spine01", "neck01", "head",
    *(f"{b}.{s}" for s in _SIDES for b in (
        "clavicle", "upperarm01", "lowerarm01", "wrist", "upperleg01", "lowerleg01", "foot")),
)
_HAND_BONES = tuple(f"finger{f}-{p}.{s}" for s in _SIDES for f in range(1, 6) for p in range(1, 4))
POSED_BONES: tuple[str, ...] = _BODY_BONES + _HAND_BONES

# MHR-70 finger names -> Anny finger number (finger1 = thumb).
_FINGERS = {"thumb": 1, "index": 2, "middle": 3, "ring": 4, "pinky": 5}
_COCO_TO_MHR = {
    "nose": "nose", "left_eye": "left-eye", "right_eye": "right-eye", "left_ear": "left-ear",
    "right_ear": "right-ear", "left_shoulder": "left-shoulder", "right_shoulder": "right-shoulder",
    "left_elbow": "left-elbow", "right_elbow": "right-elbow", "left_wrist": "left-wrist",
    "right_wrist": "right-wrist", "left_hip": "left-hip", "right_hip": "right-hip",
    "left_knee": "left-knee", "right_knee": "right-knee", "left_ankle": "left-ankle",
    "right_ankle": "right-ankle", "left_big_toe": "left-big-toe-tip", "right_big_toe": "right-big-toe-tip",
    "left_small_toe": "left-small-toe-tip", "right_small_toe": "right-small-toe-tip",
    "left_heel": "left-heel", "right_heel": "right-heel",
}


def _mapping() -> dict[str, tuple[str, str]]:
    """MHR-70 name -> (kind, argument): ("coco", label), ("head", bone), ("tip", bone), ("extra", name)."""
    out: dict[str, tuple[str, str]] = {mhr: ("coco", coco) for coco, mhr in _COCO_TO_MHR.items()}
    for side_name, s in (("left", "L"), ("right", "R")):
        for finger, n in _FINGERS.items():
            out[f"{side_name}-{finger}-tip"] = ("tip", f"finger{n}-3.{s}")
            out[f"{side_name}-{finger}-first-joint"] = ("head", f"finger{n}-3.{s}")
            out[f"{side_name}-{finger}-second-joint"] = ("head", f"finger{n}-2.{s}")
            out[f"{side_name}-{finger}-third-joint"] = ("head", f"finger{n}-1.{s}")
        for extra in ("olecranon", "cubital-fossa", "acromion"):
            out[f"{side_name}-{extra}"] = ("extra", f"{extra}.{s}")
    out["neck"] = ("neck", "clavicle")
    assert set(out) == set(mhr70.NAMES), set(mhr70.NAMES) ^ set(out)
    return out


MAPPING: dict[str, tuple[str, str]] = _mapping()


# ----------------------------------------------------------------------------------------------
# Table building (needs anny.Anny(); run once, then cached)


def _settings_key(posed_bones: tuple[str, ...]) -> str:
    content = {
        "anny": importlib.metadata.version("anny"),
        "mapping_version": MAPPING_VERSION,
        "posed_bones": list(posed_bones),
        "anny_config": {"rig": "anny", "topology": "anny", "phenotypes": "default",
                        "pose_parameterization": "local-ref", "phenotype_blendshapes": "compact"},
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:24]


def default_table_cache_dir() -> Path:
    """`<anny cache>/streamer`: anny's cache folder honours the ANNY_CACHE_DIR environment variable."""
    from anny.paths import get_anny_cache_path

    return Path(get_anny_cache_path()) / "streamer"


@contextlib.contextmanager
def _progress(what: str, every_s: float = 10.0):
    """Log `what` now, then every `every_s` seconds until the block ends, then the time it took."""
    t0 = time.monotonic()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(every_s):
            logger.info("%s: still working (%.0f s)", what, time.monotonic() - t0)

    logger.info("%s ...", what)
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        logger.info("%s: done in %.1f s", what, time.monotonic() - t0)


def _top_vertices_mean(rest: torch.Tensor, candidates: torch.Tensor, score: torch.Tensor, n: int = 3) -> torch.Tensor:
    """(V,) regression weights: equal weights on the `n` best-scoring candidate vertices."""
    best = candidates[torch.topk(score, n).indices]
    weights = torch.zeros(rest.shape[0], dtype=rest.dtype)
    weights[best] = 1.0 / n
    return weights


def build_anny_tables(posed_bones: tuple[str, ...] = POSED_BONES) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Build every shape-independent table `AnnyBody` needs from `anny.Anny()` (float64, CPU); also
    returns the bone labels.

    Keys: bone_parents (J,), template_heads (J,3), heads_blendshapes (A,J,3), orient_template (J,3,3),
    orient_blendshapes (A,J,3,3), reference_orientations (J,3,3), phenotype_mask, phenotype_projection,
    posed_bone_index (N,), kp_bones (70,S) long, kp_p0 (70,S,4), kp_dp (A,70,S,3), floor_offset ().
    """
    import anny

    with _progress("Loading anny (first run builds anny's ~790 MB cache in ANNY_CACHE_DIR, 45-110 s)"):
        model = anny.Anny(rig="anny", topology="anny", phenotypes="default",
                          pose_parameterization="local-ref", phenotype_blendshapes="compact")
    if list(model.phenotype_labels) != list(ANNY_SHAPE_NAMES):
        raise ValueError(f"anny phenotypes {model.phenotype_labels} != expected {ANNY_SHAPE_NAMES}")
    if model.bone_orientation != "cached" or model.rest_orientation_refiner is not None:
        raise ValueError(f"unsupported anny bone orientation {model.bone_orientation!r}")
    labels = list(model.bone_labels)
    missing = [b for b in posed_bones if b not in labels]
    if missing:
        raise ValueError(f"posed bones not in anny's rig: {missing}")
    bone = {name: i for i, name in enumerate(labels)}
    num_bones = len(labels)
    dtype = torch.float64

    with _progress("Building Anny -> MHR-70 keypoint tables"):
        mean_coeffs = model.get_phenotype_blendshape_coefficients()  # (1, A) at phenotypes 0.5
        rest = model.get_rest_model(mean_coeffs)
        rest_vertices = rest["rest_vertices"][0].to(dtype)  # (V, 3) A-pose, mean shape
        skin = torch.zeros(rest_vertices.shape[0], num_bones, dtype=dtype)
        skin.scatter_add_(1, model.vertex_bone_indices.long(), model.vertex_bone_weights.to(dtype))

        # Vertex regressors: the COCO-23 regressor, fingertips and the extra surface points.
        coco = anny.KeypointsRegressor.coco(model)
        coco_weights = {lab: coco.regression_weights[i].to(dtype) for i, lab in enumerate(coco.labels)}
        coco_rest = {lab: w @ rest_vertices for lab, w in coco_weights.items()}
        vertex_rows: dict[str, torch.Tensor] = {}
        head_rows: dict[str, list[tuple[int, float]]] = {}
        heads = rest["rest_bone_heads"][0].to(dtype)
        for name, (kind, arg) in MAPPING.items():
            if kind == "coco":
                vertex_rows[name] = coco_weights[arg]
            elif kind == "head":
                head_rows[name] = [(bone[arg], 1.0)]
            elif kind == "neck":
                head_rows[name] = [(bone["clavicle.L"], 0.5), (bone["clavicle.R"], 0.5)]
            elif kind == "tip":
                b = bone[arg]
                parent = model.bone_parents[b]
                direction = heads[b] - heads[parent]
                candidates = torch.nonzero(skin[:, b] > 0.5).squeeze(1)
                score = (rest_vertices[candidates] - heads[b]) @ (direction / direction.norm())
                vertex_rows[name] = _top_vertices_mean(rest_vertices, candidates, score)
            else:  # extra surface points around the elbow and the shoulder
                extra, s = arg.split(".")
                side = "left" if s == "L" else "right"
                shoulder, elbow, wrist = (coco_rest[f"{side}_{j}"] for j in ("shoulder", "elbow", "wrist"))
                if extra == "acromion":
                    mid = 0.5 * (coco_rest["left_shoulder"] + coco_rest["right_shoulder"])
                    lateral = shoulder - mid
                    lateral[2] = 0.0
                    lateral = lateral / lateral.norm()
                    offset = rest_vertices - shoulder
                    candidates = torch.nonzero((offset.norm(dim=1) < 0.08) & (offset @ lateral > -0.01)).squeeze(1)
                    score = offset[candidates, 2] + 0.3 * (offset[candidates] @ lateral)
                else:
                    upper = (elbow - shoulder) / (elbow - shoulder).norm()
                    fore = (wrist - elbow) / (wrist - elbow).norm()
                    flexion = fore - (fore @ upper) * upper
                    flexion = flexion / flexion.norm()
                    offset = rest_vertices - elbow
                    arm = skin[:, [bone[f"upperarm02.{s}"], bone[f"lowerarm01.{s}"], bone[f"upperarm01.{s}"],
                                   bone[f"lowerarm02.{s}"]]].sum(1) > 0.5
                    candidates = torch.nonzero(arm & (offset.norm(dim=1) < 0.07)
                                               & ((offset @ upper).abs() < 0.015)).squeeze(1)
                    sign = 1.0 if extra == "cubital-fossa" else -1.0
                    score = sign * (offset[candidates] @ flexion)
                vertex_rows[name] = _top_vertices_mean(rest_vertices, candidates, score)

        # Per keypoint, per bone homogeneous tables: p0 (K,J,4) and dp (A,K,J,3).
        blendshapes = model.blendshapes.to(dtype)  # (A, V, 3)
        template = model.template_vertices.to(dtype)
        heads_template = model.template_bone_heads.to(dtype)
        heads_blend = model.bone_heads_blendshapes.to(dtype)  # (A, J, 3)
        num_kp = mhr70.NUM_KEYPOINTS
        num_coeffs = blendshapes.shape[0]
        p0 = torch.zeros(num_kp, num_bones, 4, dtype=dtype)
        dp = torch.zeros(num_coeffs, num_kp, num_bones, 3, dtype=dtype)
        for k, name in enumerate(mhr70.NAMES):
            if name in vertex_rows:
                w = vertex_rows[name]
                support = torch.nonzero(w).squeeze(1)
                wv = w[support, None] * skin[support]  # (n, J)
                p0[k, :, :3] = wv.T @ template[support]
                p0[k, :, 3] = wv.sum(0)
                dp[:, k] = torch.einsum("nj,anc->ajc", wv, blendshapes[:, support])
            else:
                for b, weight in head_rows[name]:
                    p0[k, b, :3] += weight * heads_template[b]
                    p0[k, b, 3] += weight
                    dp[:, k, b] += weight * heads_blend[:, b]
        # Pack sparsely: the bones each keypoint depends on, padded with weight-0 entries.
        used = (p0[..., 3].abs() > 1e-9) | (dp.abs().amax(dim=(0, 3)) > 1e-12)
        width = int(used.sum(1).max())
        kp_bones = torch.zeros(num_kp, width, dtype=torch.long)
        for k in range(num_kp):
            idx = torch.nonzero(used[k]).squeeze(1)
            kp_bones[k, : len(idx)] = idx
            kp_bones[k, len(idx):] = idx[0]
        gathered_p0 = torch.gather(p0, 1, kp_bones[..., None].expand(-1, -1, 4)).clone()
        gathered_dp = torch.gather(dp, 2, kp_bones[None, ..., None].expand(num_coeffs, -1, -1, 3)).clone()
        pad = torch.arange(width)[None] >= used.sum(1)[:, None]
        gathered_p0[pad] = 0.0
        gathered_dp[:, pad] = 0.0

        # Soles of the average body on z = 0 with the root at the origin in the reference pose.
        out = model(None)
        floor_offset = -out["vertices"][0, :, 2].min().to(dtype)

    return {
        "bone_parents": torch.tensor(model.bone_parents, dtype=torch.long),
        "template_heads": heads_template,
        "heads_blendshapes": heads_blend,
        "orient_template": model.bone_template_orientation_matrices.to(dtype),
        "orient_blendshapes": model.bone_orientation_blendshapes.to(dtype),
        "reference_orientations": model.reference_bone_orientations.to(dtype),
        "phenotype_mask": model.stacked_phenotype_blend_shapes_mask.to(dtype),
        "phenotype_projection": model.phenotype_blendshape_projection.to(dtype),
        "posed_bone_index": torch.tensor([bone[b] for b in posed_bones], dtype=torch.long),
        "kp_bones": kp_bones,
        "kp_p0": gathered_p0,
        "kp_dp": gathered_dp,
        "floor_offset": floor_offset,
    }, labels


def load_or_build_tables(
    posed_bones: tuple[str, ...] = POSED_BONES, cache_dir: Path | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tables of `build_anny_tables`, from `cache_dir` (default `default_table_cache_dir()`) when a
    file with the same content key exists (anny version, mapping version, posed bones), else built
    and saved there, under a file lock so that processes starting together build once.
    Returns (tables, bone labels)."""
    from safetensors.torch import load_file, save_file

    cache_dir = Path(cache_dir) if cache_dir is not None else default_table_cache_dir()
    path = cache_dir / f"anny_mhr70_{_settings_key(posed_bones)}.safetensors"
    labels_path = path.with_suffix(".json")

    def cached() -> tuple[dict[str, torch.Tensor], list[str]] | None:
        if path.exists() and labels_path.exists():
            logger.debug("loading Anny MHR-70 tables from %s", path)
            return load_file(str(path)), json.loads(labels_path.read_text())["bone_labels"]
        return None

    if (hit := cached()) is not None:
        return hit
    cache_dir.mkdir(parents=True, exist_ok=True)
    # One builder at a time (a stage starts several processes at once): the others wait, then load.
    with open(cache_dir / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (hit := cached()) is not None:
            return hit
        logger.info("Anny MHR-70 tables not cached at %s: building them once", path)
        tables, labels = build_anny_tables(posed_bones)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
        save_file({k: v.contiguous() for k, v in tables.items()}, str(tmp))
        labels_path.write_text(json.dumps({"bone_labels": labels, "posed_bones": list(posed_bones)}))
        tmp.replace(path)  # the tables appear atomically, after the labels
        logger.info("saved Anny MHR-70 tables to %s", path)
    return tables, labels


# ----------------------------------------------------------------------------------------------
# The model


def _homogeneous(rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3), (..., 3) -> (..., 4, 4)."""
    top = torch.cat([rotation, translation[..., None]], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


@dataclasses.dataclass(frozen=True)
class _ShapeTables:
    """Everything that depends on the shape only (batch B or 1). The FK runs on a reduced tree whose
    nodes are the root and the posed bones; every other bone hangs rigidly off its nearest posed
    ancestor (its "anchor") in the reference pose.

    shape: (B, 6) the phenotypes these were computed for.
    node_left: (B, N, 3, 3) and node_trans (B, N, 3): the link of posed bone n from its parent node
        is [node_left D_n U_n | node_trans], D_n its pose rotation.
    anchor_from_bone: (B, J, 4, 4) each bone's rest frame in its anchor's frame.
    kp_from_nodes: (B, (N + 1) * 4, 70): keypoint k = sum over nodes n of W_n[:3] @ column block n of k,
        the homogeneous keypoint tables expressed in the node frames.
    """

    shape: torch.Tensor
    node_left: torch.Tensor
    node_trans: torch.Tensor
    anchor_from_bone: torch.Tensor
    kp_from_nodes: torch.Tensor


@dataclasses.dataclass(frozen=True)
class _RowTables:
    """One shape's `_ShapeTables` as float64 NumPy arrays without the batch dimension, for single-row
    evaluations without autograd (`AnnyBody._row_tables`): node_left (N, 3, 3), node_trans (N, 3),
    anchor_from_bone (J, 4, 4), kp_from_nodes ((N + 1) * 4, 70) without the keypoint offsets."""

    node_left: np.ndarray
    node_trans: np.ndarray
    anchor_from_bone: np.ndarray
    kp_from_nodes: np.ndarray


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b (float64) run by torch: its intra-op threads are the process's setting (the fitter node uses
    one), where NumPy's BLAS would spread a product this size over a pool of its own on every core."""
    return (torch.from_numpy(a) @ torch.from_numpy(b)).numpy()


def _special_procrustes(matrices: np.ndarray) -> np.ndarray:
    """(M, 3, 3) -> (M, 3, 3) the nearest rotations (SVD, determinant +1; float64)."""
    u, _, vt = np.linalg.svd(matrices)
    u[:, :, -1] *= np.linalg.det(u @ vt)[:, None]
    return u @ vt


def _so3_left_jacobian(rotvec: np.ndarray) -> np.ndarray:
    """(M, 3) axis-angle -> (M, 3, 3) J_l with exp([w + dw]x) = exp([J_l dw]x) exp([w]x) to first order (float64):
    I + a [w]x + b [w]x^2, [w]x^2 = w w^T - |w|^2 I."""
    theta2 = (rotvec * rotvec).sum(-1)
    small = theta2 < 1e-8
    safe2 = np.where(small, 1.0, theta2)
    safe = np.sqrt(safe2)
    a = np.where(small, 0.5 - theta2 / 24, (1 - np.cos(safe)) / safe2)
    b = np.where(small, 1 / 6 - theta2 / 120, (safe - np.sin(safe)) / (safe2 * safe))
    x, y, z = rotvec.T
    bxy, bxz, byz, ax, ay, az = b * x * y, b * x * z, b * y * z, a * x, a * y, a * z
    return np.stack([1.0 + b * (x * x - theta2), bxy - az, bxz + ay,
                     bxy + az, 1.0 + b * (y * y - theta2), byz - ax,
                     bxz - ay, byz + ax, 1.0 + b * (z * z - theta2)], axis=-1).reshape(-1, 3, 3)


@dataclasses.dataclass(frozen=True)
class _ColumnPlan:
    """Where each asked Jacobian column comes from (`AnnyBody._row_keypoints_and_jacobian`).

    rot_cols: positions (in the asked columns) of rotation columns; nodes: (U,) the nodes they turn (root
    0, posed bone i: i + 1); rot_slot: for each rotation column, node slot * 3 + axis; transl_cols and
    transl_axes: translation columns and their axes; shape_cols: positions of shape columns."""

    rot_cols: np.ndarray
    nodes: np.ndarray
    rot_slot: np.ndarray
    transl_cols: np.ndarray
    transl_axes: np.ndarray
    shape_cols: np.ndarray

    @classmethod
    def of(cls, columns: np.ndarray, pose: slice, shape: slice) -> "_ColumnPlan":
        rot_cols = np.flatnonzero((columns < 3) | ((columns >= pose.start) & (columns < pose.stop)))
        dims = columns[rot_cols]
        node = np.where(dims < 3, 0, (dims - pose.start) // 3 + 1)
        axis = np.where(dims < 3, dims, (dims - pose.start) % 3)
        nodes, slot = np.unique(node, return_inverse=True)
        transl_cols = np.flatnonzero((columns >= 3) & (columns < 6))
        return cls(rot_cols, nodes, slot * 3 + axis, transl_cols, columns[transl_cols] - 3,
                   np.flatnonzero((columns >= shape.start) & (columns < shape.stop)))


class AnnyBody(BodyModel):
    """Anny behind the `BodyModel` interface (see the module docstring for layout and frame).

    posed_bones: Anny bones with 3 pose dims each (default `POSED_BONES`).
    cache_dir: where the keypoint tables are cached (default `<ANNY_CACHE_DIR>/streamer`).
    """

    name = "anny"

    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        posed_bones: tuple[str, ...] = POSED_BONES,
        cache_dir: Path | str | None = None,
    ) -> None:
        from anny.models.phenotype import make_phenotype_anchors
        from anny.utils.kinematics import get_kinematic_chain

        self.device = torch.device(device)
        self.dtype = dtype
        self._np_dtype = torch.empty((), dtype=dtype).numpy().dtype.type
        tables, labels = load_or_build_tables(tuple(posed_bones), Path(cache_dir) if cache_dir else None)
        self._np = {k: v.to(torch.float64).numpy() for k, v in tables.items() if v.is_floating_point()}
        t = {k: v.to(device=self.device, dtype=dtype if v.is_floating_point() else v.dtype)
             for k, v in tables.items()}
        self._t = t
        self.joint_names = tuple(labels)
        self.joint_parents = tuple(int(p) for p in t["bone_parents"].tolist())
        self.posed_bones = tuple(posed_bones)
        self._parents = torch.tensor([max(p, 0) for p in self.joint_parents], device=self.device)
        self._posed = t["posed_bone_index"]
        self._init_reduced_tree(get_kinematic_chain)
        self._anchors = make_phenotype_anchors(dtype, self.device)
        self._np_anchors = {k: v.numpy() for k, v in make_phenotype_anchors(torch.float64, "cpu").items()}
        self._floor_offset = float(t["floor_offset"])

        n_pose = 3 * len(self.posed_bones)
        self.groups = {
            "global_rot": slice(0, 3),
            "transl": slice(3, 6),
            "pose": slice(6, 6 + n_pose),
            "shape": slice(6 + n_pose, 6 + n_pose + len(ANNY_SHAPE_NAMES)),
        }
        for i, b in enumerate(self.posed_bones):
            self.groups[f"pose:{b}"] = slice(6 + 3 * i, 9 + 3 * i)
        n_body = 3 * sum(1 for b in self.posed_bones if not b.startswith("finger"))
        body_first = [b for b in self.posed_bones if not b.startswith("finger")]
        if list(self.posed_bones[: len(body_first)]) == body_first:
            self.groups["pose_body"] = slice(6, 6 + n_body)
            self.groups["pose_hands"] = slice(6 + n_body, 6 + n_pose)
        shape0 = self.groups["shape"].start
        for i, s in enumerate(ANNY_SHAPE_NAMES):
            self.groups[f"shape:{s}"] = slice(shape0 + i, shape0 + i + 1)
        self.num_params = self.groups["shape"].stop
        self.movable = torch.ones(self.num_params, dtype=torch.bool, device=self.device)
        for s in ANNY_SHAPE_NAMES:
            if s not in MOVABLE_SHAPE_NAMES:
                self.movable[self.groups[f"shape:{s}"]] = False
        self.keypoint_defined = torch.ones(mhr70.NUM_KEYPOINTS, dtype=torch.bool, device=self.device)
        self._cache: dict[bytes, _ShapeTables] = {}  # shape bytes -> tables (LRU), `_cached_tables`
        self._row_cache: dict[bytes, _RowTables] = {}  # shape bytes -> tables (LRU), `_row_tables`
        self._column_plans: dict[bytes, _ColumnPlan] = {}  # asked Jacobian columns -> their plan
        self._blend_cache: dict[tuple, np.ndarray] = {}  # `_blendshape_sums` corners per cell
        num_coeffs = self._np["heads_blendshapes"].shape[0]
        self._np_blendshapes = np.concatenate([self._np[k].reshape(num_coeffs, -1) for k in (
            "heads_blendshapes", "orient_blendshapes", "kp_dp")], axis=1)  # (A, J * 3 + J * 9 + 70 * S * 3)
        self._zero_offsets = torch.zeros(mhr70.NUM_KEYPOINTS, 3, device=self.device, dtype=self.dtype)
        self._kp_offsets = self._zero_offsets
        self._kp_offset_table: torch.Tensor | None = None
        self._kp_offset_rows: np.ndarray | None = None  # `_kp_offset_table[0]` as float64 NumPy
        self._offsets_memo: tuple[bytes, torch.Tensor, np.ndarray] | None = None  # last nonzero offsets set
        self._last_nodes: tuple[bytes, np.ndarray] | None = None  # (params bytes, node poses): `_row_node_poses`

    def _init_reduced_tree(self, get_kinematic_chain) -> None:
        """Constants of the reduced FK tree (root + posed bones) and of the per-bone anchoring."""
        num_bones = len(self.joint_names)
        node_bones = [0] + self._posed.tolist()
        if len(set(node_bones)) != len(node_bones):
            raise ValueError("posed bones must be distinct and must not include the root")
        node_of_bone = {b: n for n, b in enumerate(node_bones)}
        anchor = [0] * num_bones  # node index of each bone's nearest posed ancestor-or-self
        for b in range(num_bones):  # parents come before children in Anny's bone order
            anchor[b] = node_of_bone[b] if b in node_of_bone else anchor[self.joint_parents[b]]
        node_parent = [-1] + [anchor[self.joint_parents[b]] for b in node_bones[1:]]
        levels, (local, order, inverse, _) = get_kinematic_chain(node_parent)
        subtree = torch.eye(len(node_bones), dtype=self.dtype)  # subtree[c, n]: node n descends from c (or is c)
        for n in range(1, len(node_bones)):
            ancestor = node_parent[n]
            while ancestor >= 0:
                subtree[ancestor, n] = 1.0
                ancestor = node_parent[ancestor]
        self._node_parent = torch.tensor([max(p, 0) for p in node_parent], device=self.device)
        self._subtree = subtree.to(self.device)
        full_levels, (full_local, full_order, full_inverse, _) = get_kinematic_chain(list(self.joint_parents))
        dev = self.device
        self._node_bones = torch.tensor(node_bones, device=dev)
        self._bone_anchor = torch.tensor(anchor, device=dev)
        self._levels = levels
        self._level_parents = [local[first:last].to(dev) for first, last in levels[1:]]
        self._order = order[1:].to(dev) - 1  # posed links in depth order (node index - 1)
        self._inverse_order = inverse.to(dev)
        self._full_levels = full_levels
        self._full_level_parents = [full_local[first:last].to(dev) for first, last in full_levels[1:]]
        self._full_order = full_order.to(dev)
        self._full_inverse_order = full_inverse.to(dev)
        self._is_node_ordered = torch.zeros(num_bones, dtype=torch.bool, device=dev)
        self._is_node_ordered[torch.tensor([int(full_inverse[b]) for b in node_bones])] = True
        self._posed_parent = self._parents[self._posed]
        self._posed_right = self._t["reference_orientations"][self._posed]
        # float64 NumPy copies for single-row evaluations (`_row_node_poses`, `keypoints_and_jacobian`)
        as_np = lambda t: t.detach().to(device="cpu", dtype=torch.float64).numpy()  # noqa: E731
        self._np_root_ref = as_np(self._t["reference_orientations"][0])
        self._np_posed_right = as_np(self._posed_right)
        self._np_order = self._order.cpu().numpy()
        self._np_inverse_order = self._inverse_order.cpu().numpy()
        self._np_level_parents = [p.cpu().numpy() for p in self._level_parents]
        self._np_subtree = as_np(subtree)
        self._np_node_parent = self._node_parent.cpu().numpy()
        self._np_parents = self._parents.cpu().numpy()
        self._np_posed = self._posed.cpu().numpy()
        self._np_posed_parent = self._posed_parent.cpu().numpy()
        self._np_bone_anchor = self._bone_anchor.cpu().numpy()
        self._np_kp_bones = self._t["kp_bones"].cpu().numpy()
        self._np_full_order = self._full_order.cpu().numpy()
        self._np_full_inverse_order = self._full_inverse_order.cpu().numpy()
        self._np_full_level_parents = [p.cpu().numpy() for p in self._full_level_parents]
        self._np_is_node_ordered = self._is_node_ordered.cpu().numpy()
        # Keypoint entry (k, s) on bone b moves with node anchor[b]: one-hot (70, S, N + 1).
        kp_anchor = self._bone_anchor[self._t["kp_bones"]]
        self._kp_onehot = torch.nn.functional.one_hot(kp_anchor, len(node_bones)).to(self.dtype)
        # The node each keypoint mostly moves with (largest skinning weight): the frame of its offset.
        node_weight = torch.einsum("ksn,ks->kn", self._kp_onehot, self._t["kp_p0"][..., 3].abs())
        self.keypoint_node = node_weight.argmax(1)
        self._np_keypoint_node = self.keypoint_node.cpu().numpy()
        kp_entry_node = self._bone_anchor[self._t["kp_bones"]].cpu().numpy()  # (70, S)
        self._np_kp_slot = (kp_entry_node * mhr70.NUM_KEYPOINTS + np.arange(mhr70.NUM_KEYPOINTS)[:, None]).ravel()

    # -- parameters ------------------------------------------------------------------------

    def default_params(self, batch: int = 1) -> torch.Tensor:
        """(B, P): reference pose, average shape (0.5), facing -Y, soles on z = 0."""
        params = torch.zeros(batch, self.num_params, device=self.device, dtype=self.dtype)
        params[:, self.groups["transl"].start + 2] = self._floor_offset
        params[:, self.groups["shape"]] = 0.5
        return params

    def _check(self, params: torch.Tensor) -> torch.Tensor:
        if params.ndim != 2 or params.shape[1] != self.num_params:
            raise ValueError(f"params: expected (B, {self.num_params}), got {tuple(params.shape)}")
        return params

    # -- shape -----------------------------------------------------------------------------

    def _compute_shape_tables(self, shape: torch.Tensor) -> _ShapeTables:
        from anny.models.phenotype import phenotype_blendshape_weights

        t = self._t
        weights = phenotype_blendshape_weights(shape, list(ANNY_SHAPE_NAMES), self._anchors,
                                               t["phenotype_mask"], extrapolate=False)
        coeffs = weights @ t["phenotype_projection"]  # (B, A)
        heads = t["template_heads"] + (coeffs @ t["heads_blendshapes"].flatten(1)).unflatten(1, (-1, 3))
        # Rest bone orientations barely move with the phenotypes (bone lengths do): computed exactly,
        # but without a gradient path through the 104 Procrustes SVDs (10x the cost of everything else).
        with torch.no_grad():
            rest_rot = roma.special_procrustes(
                t["orient_template"] + (coeffs @ t["orient_blendshapes"].flatten(1)).unflatten(1, (-1, 3, 3)))
        # Reference-pose links (Anny "local-ref" FK with identity deltas): K_c = [U_p^T U_c | U_p^T q_c],
        # q_c = A_p (h_c - h_p), A = U R^T (A_root = I), U the reference orientations.
        ref = t["reference_orientations"]
        parents = self._parents
        a = ref @ rest_rot.transpose(-1, -2)
        a = torch.cat([torch.eye(3, dtype=a.dtype, device=a.device).expand_as(a[:, :1]), a[:, 1:]], dim=1)
        offsets = (a[:, parents] @ (heads - heads[:, parents])[..., None])[..., 0]
        up_t = ref[parents].transpose(-1, -2)
        links = _homogeneous((up_t @ ref).expand(offsets.shape[0], -1, -1, -1), (up_t @ offsets[..., None])[..., 0])
        # Each bone's reference frame in its anchor's: C_c = I at nodes, else C_p K_c.
        links_ordered = links[:, self._full_order]
        eye = torch.eye(4, dtype=links.dtype, device=links.device)
        chain = [eye.expand(links.shape[0], 1, 4, 4)]
        for (first, last), local in zip(self._full_levels[1:], self._full_level_parents):
            step = chain[-1][:, local] @ links_ordered[:, first:last]
            chain.append(torch.where(self._is_node_ordered[first:last, None, None], eye, step))
        anchor_from_bone = torch.cat(chain, dim=1)[:, self._full_inverse_order]
        # Posed links from the parent node: C_p K_c(D) = [C_p.R U_p^T D U_c | (C_p K_c(I)).t].
        parent_c = anchor_from_bone[:, self._posed_parent]
        node_left = parent_c[..., :3, :3] @ up_t[self._posed]
        node_trans = (parent_c @ links[:, self._posed])[..., :3, 3]
        # Keypoint tables: T_b p = W_b P_b^-1 p, so in bone frames [R^T (x - w h); w] (R, h the rest
        # frame), then in anchor frames, merged per anchor.
        dp = (coeffs @ t["kp_dp"].flatten(1)).unflatten(1, t["kp_dp"].shape[1:])  # (B, 70, S, 3)
        p0 = t["kp_p0"]
        bones = t["kp_bones"]
        w = p0[..., 3:]
        xyz = p0[..., :3] + dp - w * heads[:, bones]
        local = (rest_rot[:, bones].transpose(-1, -2) @ xyz[..., None])[..., 0]
        kp_bone = torch.cat([local, w.expand(*local.shape[:-1], 1)], dim=-1)
        kp_anchor = (anchor_from_bone[:, bones] @ kp_bone[..., None])[..., 0]
        # Dense per-node form: keypoints = [W_n rows] (3, N * 4) @ kp_from_nodes (N * 4, 70).
        kp_from_nodes = torch.einsum("ksn,bksj->bnjk", self._kp_onehot, kp_anchor).flatten(1, 2)
        return _ShapeTables(shape=shape, node_left=node_left, node_trans=node_trans,
                            anchor_from_bone=anchor_from_bone, kp_from_nodes=kp_from_nodes)

    def _shape_tables(self, params: torch.Tensor) -> _ShapeTables:
        """Tables for the batch's shapes: differentiable when shape dims are movable and params need
        gradients; else from a small cache keyed by the shape values (one entry per distinct shape)."""
        shape = params[:, self.groups["shape"]]
        if bool(self.movable[self.groups["shape"]].any()) and params.requires_grad:
            frozen = ~self.movable[self.groups["shape"]]
            if frozen.any():
                shape = torch.where(frozen, shape.detach(), shape)
            return self._with_offsets(self._compute_shape_tables(shape))
        shape = shape.detach()
        if shape.shape[0] == 1 or bool((shape == shape[:1]).all()):
            return self._with_offsets(self._cached_tables(shape[:1]))
        unique, inverse = torch.unique(shape, dim=0, return_inverse=True)
        parts = [self._with_offsets(self._cached_tables(u[None])) for u in unique]
        return _ShapeTables(*(torch.cat([getattr(p, f.name) for p in parts])[inverse]
                              for f in dataclasses.fields(_ShapeTables)))

    def _cached_tables(self, shape: torch.Tensor) -> _ShapeTables:
        """Tables of one shape (1, 6) without the keypoint offsets, from the cache or computed (no
        gradient) and cached."""
        shape_key = shape.cpu().numpy().tobytes()
        base = self._cache.pop(shape_key, None)
        if base is None:
            with torch.no_grad():
                base = self._compute_shape_tables(shape.clone())
            while len(self._cache) >= _SHAPE_CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
        self._cache[shape_key] = base  # most recently used last
        return base

    def _row_tables(self, p: np.ndarray) -> _RowTables:
        """The float64 tables of the shape of `p` (P,) model dtype, from a small cache or computed
        (`_compute_row_tables`) and cached."""
        shape = p[self.groups["shape"]]
        shape_key = shape.tobytes()
        row = self._row_cache.pop(shape_key, None)
        if row is None:
            row = self._compute_row_tables(shape.astype(np.float64))
            while len(self._row_cache) >= _SHAPE_CACHE_SIZE:
                self._row_cache.pop(next(iter(self._row_cache)))
        self._row_cache[shape_key] = row  # most recently used last
        return row

    def _phenotype_coefficients(self, shape: np.ndarray) -> np.ndarray:
        """(6,) phenotypes -> (A,) float64 blendshape coefficients: anny's `phenotype_blendshape_weights`
        (no extrapolation; the phenotypes Anny exposes but this body does not, 0.5; equal races) times its
        projection, in NumPy (~30x faster than the torch call on one row)."""
        from anny.models.model_data import PHENOTYPE_VARIATIONS

        values = dict(zip(ANNY_SHAPE_NAMES, shape.tolist()))
        parts = []
        for feature, variations in PHENOTYPE_VARIATIONS.items():
            if feature == "race":  # no race phenotype is exposed: 0.5 each, normalised
                parts.append(np.full(len(variations), 1.0 / len(variations)))
                continue
            anchors = self._np_anchors[feature]
            value = min(max(values.get(feature, 0.5), anchors[0]), anchors[-1])
            i = min(max(int(np.searchsorted(anchors, value, side="left")), 1), len(anchors) - 1)
            alpha = (value - anchors[i - 1]) / (anchors[i] - anchors[i - 1])
            weights = np.zeros(len(anchors))
            weights[i - 1], weights[i] = 1.0 - alpha, alpha
            parts.append(weights)
        mask = self._np["phenotype_mask"]
        blend = np.prod(np.concatenate(parts) * mask + (1.0 - mask), axis=-1)
        return _matmul(blend, self._np["phenotype_projection"])

    def _blendshape_sums(self, shape: np.ndarray) -> np.ndarray:
        """(6,) phenotypes -> (J * 3 + J * 9 + 70 * S * 3,) float64: the blendshape coefficients times the
        bone-head, bone-orientation and keypoint blendshapes, concatenated.

        The coefficients are products of per-phenotype interpolation weights, each linear in its phenotype
        between two anchors: within an anchor cell of the movable phenotypes (height, proportions) they
        are multilinear in them, so the sums are the multilinear interpolation of the sums at the cell's
        corners, computed once per cell and value of the other phenotypes (a subject's shape estimate
        stays in one)."""
        names = list(ANNY_SHAPE_NAMES)
        moving = [names.index(n) for n in MOVABLE_SHAPE_NAMES]
        cell, fraction, corners = [], [], []
        for i in moving:
            anchors = self._np_anchors[ANNY_SHAPE_NAMES[i]]
            value = min(max(float(shape[i]), anchors[0]), anchors[-1])
            c = min(max(int(np.searchsorted(anchors, value, side="left")), 1), len(anchors) - 1)
            cell.append(c)
            fraction.append((value - anchors[c - 1]) / (anchors[c] - anchors[c - 1]))
            corners.append((anchors[c - 1], anchors[c]))
        key = (np.delete(shape, moving).tobytes(), *cell)
        bits = list(itertools.product((0, 1), repeat=len(moving)))  # corner j: lower (0) or upper (1) anchor
        sums = self._blend_cache.get(key)
        if sums is None:
            corner_shapes = np.repeat(shape[None], len(bits), axis=0)
            for j, corner in enumerate(bits):
                corner_shapes[j, moving] = [bounds[b] for bounds, b in zip(corners, corner)]
            coeffs = np.stack([self._phenotype_coefficients(c) for c in corner_shapes])  # (2^m, A)
            sums = _matmul(coeffs, self._np_blendshapes)  # (2^m, F)
            while len(self._blend_cache) >= _SHAPE_CACHE_SIZE:  # the oldest out
                self._blend_cache.pop(next(iter(self._blend_cache)))
            self._blend_cache[key] = sums
        weights = [math.prod(f if b else 1.0 - f for f, b in zip(fraction, corner)) for corner in bits]
        return sum(w * corner_sums for w, corner_sums in zip(weights, sums))

    def _compute_row_tables(self, shape: np.ndarray) -> _RowTables:
        """`_compute_shape_tables` of one shape (6,) in float64 NumPy, without autograd (~8x faster)."""
        t = self._np
        num_bones = len(self.joint_names)
        sums = self._blendshape_sums(shape)
        heads = t["template_heads"] + sums[:num_bones * 3].reshape(-1, 3)
        rest_rot = _special_procrustes(t["orient_template"] + sums[num_bones * 3:num_bones * 12].reshape(-1, 3, 3))
        ref, parents = t["reference_orientations"], self._np_parents
        a = ref @ rest_rot.transpose(0, 2, 1)
        a[0] = np.eye(3)
        offsets = (a[parents] @ (heads - heads[parents])[..., None])[..., 0]
        up_t = ref[parents].transpose(0, 2, 1)
        links = np.zeros((len(ref), 4, 4))
        links[:, :3, :3] = up_t @ ref
        links[:, :3, 3] = (up_t @ offsets[..., None])[..., 0]
        links[:, 3, 3] = 1.0
        links_ordered = links[self._np_full_order]
        chain = [np.eye(4)[None]]
        for (first, last), local in zip(self._full_levels[1:], self._np_full_level_parents):
            step = chain[-1][local] @ links_ordered[first:last]
            step[self._np_is_node_ordered[first:last]] = np.eye(4)
            chain.append(step)
        anchor_from_bone = np.concatenate(chain)[self._np_full_inverse_order]
        parent_c = anchor_from_bone[self._np_posed_parent]
        node_left = parent_c[:, :3, :3] @ up_t[self._np_posed]
        node_trans = (parent_c @ links[self._np_posed])[:, :3, 3]
        dp = sums[num_bones * 12:].reshape(t["kp_dp"].shape[1:])  # (70, S, 3)
        p0, bones = t["kp_p0"], self._np_kp_bones
        w = p0[..., 3:]
        xyz = p0[..., :3] + dp - w * heads[bones]
        local = np.einsum("ksji,ksj->ksi", rest_rot[bones], xyz)  # R^T xyz (einsum: faster than stacked matmul)
        kp_bone = np.concatenate([local, w], axis=-1)  # (70, S, 4)
        kp_anchor = np.einsum("ksij,ksj->ksi", anchor_from_bone[bones], kp_bone)  # (70, S, 4)
        # merged per anchor node: entry (k, s) adds to column k of node anchor(k, s)'s block
        num_nodes, num_kp = len(self._node_bones), mhr70.NUM_KEYPOINTS
        kp_from_nodes = np.stack([np.bincount(self._np_kp_slot, kp_anchor[..., j].ravel(), num_nodes * num_kp)
                                  for j in range(4)], axis=1)  # (N + 1) * 70 -> (N + 1, 4, 70) below
        return _RowTables(node_left, node_trans, anchor_from_bone,
                          kp_from_nodes.reshape(num_nodes, num_kp, 4).transpose(0, 2, 1).reshape(-1, num_kp))

    def _with_offsets(self, tables: _ShapeTables) -> _ShapeTables:
        """`tables` with the keypoint offsets added (rigid, w = 0, in each keypoint's node frame)."""
        if self._kp_offset_rows is None:
            return tables
        if self._kp_offset_table is None:  # the offsets as an addition to `_ShapeTables.kp_from_nodes`
            self._kp_offset_table = torch.as_tensor(self._kp_offset_rows, device=self.device, dtype=self.dtype)[None]
        return dataclasses.replace(tables, kp_from_nodes=tables.kp_from_nodes + self._kp_offset_table)

    # -- keypoint offsets ------------------------------------------------------------------

    @property
    def keypoint_offsets(self) -> torch.Tensor:
        """(70, 3) rigid offset of each keypoint in the frame of its node (`keypoint_node`), metres.

        A subject-specific marker calibration: where this subject's detector puts a point relative to
        Anny's definition of it. Zero by default; every keypoint evaluation (and its exact Jacobian)
        includes it. Set with `set_keypoint_offsets`."""
        return self._kp_offsets

    def set_keypoint_offsets(self, offsets: np.ndarray | torch.Tensor | None) -> None:
        """Use `offsets` (70, 3) metres in the keypoint node frames (None: zero) from now on.

        Cheap (a fitter sets a subject's offsets around every step): checked and laid out in NumPy, the
        last nonzero offsets remembered; the torch table for batched evaluations is built when one first
        needs it."""
        if isinstance(offsets, torch.Tensor):
            offsets = offsets.detach().cpu()
        value = np.zeros(self._kp_offsets.shape) if offsets is None else np.asarray(offsets, dtype=np.float64)
        if value.shape != tuple(self._kp_offsets.shape) or not np.isfinite(value).all():
            raise ValueError(f"keypoint offsets: expected finite {tuple(self._kp_offsets.shape)}, "
                             f"got {value.shape}")
        self._kp_offset_table, self._kp_offset_rows = None, None
        if not value.any():
            self._kp_offsets = self._zero_offsets
            return
        key = value.tobytes()
        if self._offsets_memo is None or self._offsets_memo[0] != key:
            tensor = torch.as_tensor(value, dtype=self.dtype).to(self.device)
            rows = np.zeros((len(self._node_bones), 4, mhr70.NUM_KEYPOINTS))
            rows[self._np_keypoint_node, :3, np.arange(mhr70.NUM_KEYPOINTS)] = tensor.cpu().to(torch.float64).numpy()
            self._offsets_memo = (key, tensor, rows.reshape(-1, mhr70.NUM_KEYPOINTS))
        # the rows are an addition to `_RowTables.kp_from_nodes`
        _, self._kp_offsets, self._kp_offset_rows = self._offsets_memo

    def keypoint_frames(self, params: torch.Tensor) -> torch.Tensor:
        """(B, P) -> (B, 70, 3, 3) world_from_node rotation of each keypoint's node (its offset frame)."""
        params = self._check(params)
        nodes = self._node_poses(params, None)
        return nodes[:, self.keypoint_node, :3, :3]

    # -- kinematics ------------------------------------------------------------------------

    def bone_poses(self, params: torch.Tensor) -> torch.Tensor:
        """(B, P) -> (B, J, 4, 4) world_from_bone poses (Anny bone frames, heads at the joints)."""
        params = self._check(params)
        if self._single_row(params):
            row = self._as_row(params)
            poses = self._row_node_poses(row)[self._np_bone_anchor] @ self._row_tables(row).anchor_from_bone
            return torch.from_numpy(poses).to(self.device, self.dtype)[None]
        tables = self._shape_tables(params)
        nodes = self._node_poses(params, tables)
        return nodes[:, self._bone_anchor] @ tables.anchor_from_bone

    def _single_row(self, params: torch.Tensor) -> bool:
        """Whether `params` is evaluated by the float64 NumPy kinematics (`_row_node_poses`): one row, no
        autograd. Torch on tensors this small costs its per-operation overhead (~4x the NumPy time)."""
        return params.shape[0] == 1 and not (params.requires_grad and torch.is_grad_enabled())

    def _node_poses(self, params: torch.Tensor, tables: _ShapeTables | None) -> torch.Tensor:
        """(B, N + 1, 4, 4) world poses of the reduced tree's nodes (root, then posed bones), model dtype.
        tables: `_shape_tables(params)`, or None to get them here when needed."""
        if self._single_row(params):
            return torch.from_numpy(self._row_node_poses(self._as_row(params))).to(self.device, self.dtype)[None]
        return self._compute_node_poses(params, self._shape_tables(params) if tables is None else tables)

    def _as_row(self, params: torch.Tensor | np.ndarray) -> np.ndarray:
        """(1, P) tensor or (P,) array -> (P,) NumPy array in the model dtype (the values the torch path sees)."""
        if isinstance(params, torch.Tensor):
            return params.detach().cpu().numpy().reshape(-1).astype(self._np_dtype, copy=False)
        row = np.asarray(params).astype(self._np_dtype)
        if row.shape != (self.num_params,):
            raise ValueError(f"params: expected ({self.num_params},), got {row.shape}")
        return row

    def keypoints_row(self, params: np.ndarray) -> np.ndarray:
        """(P,) -> (70, 3) float64 keypoints, NumPy in and out: `keypoints` of one row without the torch
        conversions (a fitter's hot path); `params` is rounded to the model dtype first, as there."""
        return self._row_keypoints(self._as_row(params))

    def keypoints_and_jacobian_row(self, params: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P,), (C,) -> ((70, 3), (70, 3, C)) float64: `keypoints_and_jacobian` of one row, NumPy in and out."""
        return self._row_keypoints_and_jacobian(self._as_row(params), np.asarray(columns, np.int64))

    def _row_node_poses(self, p: np.ndarray) -> np.ndarray:
        """(P,) model dtype -> (N + 1, 4, 4) float64 world node poses, computed in NumPy (no autograd).

        The last row is remembered: a fitter judging its shipped parameters and then asking for their
        joint rotations (or the keypoint frames) runs the kinematics once. The node poses depend on the
        parameters only (shape included), not on the keypoint offsets."""
        key = p.tobytes()
        if self._last_nodes is not None and self._last_nodes[0] == key:
            return self._last_nodes[1]
        row = self._row_tables(p)
        p = p.astype(np.float64)
        rotations = Rotation.from_rotvec(np.concatenate([p[0:3], p[self.groups["pose"]]]).reshape(-1, 3)).as_matrix()
        num_nodes = len(rotations)
        nodes = np.zeros((num_nodes, 4, 4))
        nodes[:, 3, 3] = 1.0
        root_ref = self._np_root_ref
        nodes[0, :3, :3] = root_ref.T @ rotations[0] @ root_ref
        nodes[0, :3, 3] = p[3:6] @ root_ref
        links = np.zeros((num_nodes - 1, 4, 4))
        links[:, 3, 3] = 1.0
        links[:, :3, :3] = row.node_left @ rotations[1:] @ self._np_posed_right
        links[:, :3, 3] = row.node_trans
        links = links[self._np_order]
        chain = [nodes[:1]]
        for (first, last), local in zip(self._levels[1:], self._np_level_parents):
            chain.append(chain[-1][local] @ links[first - 1:last - 1])
        nodes = np.concatenate(chain)[self._np_inverse_order]
        self._last_nodes = (key, nodes)
        return nodes

    def _row_keypoint_table(self, p: np.ndarray) -> np.ndarray:
        """((N + 1) * 4, 70) float64 keypoint table of the shape of `p` (P,), offsets included."""
        table = self._row_tables(p).kp_from_nodes
        return table if self._kp_offset_rows is None else table + self._kp_offset_rows

    def _row_keypoints(self, p: np.ndarray) -> np.ndarray:
        """(P,) model dtype -> (70, 3) float64 keypoints (NumPy kinematics)."""
        nodes = self._row_node_poses(p)
        return (nodes[:, :3, :].transpose(1, 0, 2).reshape(3, -1) @ self._row_keypoint_table(p)).T

    def _compute_node_poses(self, params: torch.Tensor, tables: _ShapeTables) -> torch.Tensor:
        batch = params.shape[0]
        rotations = roma.rotvec_to_rotmat(
            torch.cat([params[:, None, 0:3], params[:, self.groups["pose"]].reshape(batch, -1, 3)], dim=1))
        root_ref = self._t["reference_orientations"][0]
        root = _homogeneous(root_ref.T @ rotations[:, 0] @ root_ref, params[:, 3:6] @ root_ref)
        links = _homogeneous(tables.node_left @ rotations[:, 1:] @ self._posed_right,
                             tables.node_trans.expand(batch, -1, -1))[:, self._order]
        chain = [root[:, None]]
        for (first, last), local in zip(self._levels[1:], self._level_parents):
            chain.append(chain[-1][:, local] @ links[:, first - 1:last - 1])
        return torch.cat(chain, dim=1)[:, self._inverse_order]

    def keypoints_and_jacobian(self, params: torch.Tensor, columns: torch.Tensor | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints and their Jacobian, without autograd: (B, P) -> ((B, 70, 3), (B, 70, 3, C)), model dtype.

        columns: (C,) parameter indices (default: the movable dims). Rotation and translation columns
        are analytic (each posed bone turns its subtree's share of every keypoint about its head; the
        axis-angle enters through SO(3)'s left Jacobian), computed in float64 NumPy for the bones whose
        columns are asked for only; shape columns are forward differences (step 1e-3 in float32, 1e-6 in
        float64). ~1 forward pass of cost instead of C + 1.
        """
        params = self._check(params).detach()
        if columns is None:
            columns = torch.nonzero(self.movable, as_tuple=True)[0]
        columns = torch.as_tensor(columns, dtype=torch.long).cpu().numpy()
        rows = [self._row_keypoints_and_jacobian(self._as_row(params[b]), columns) for b in range(params.shape[0])]
        as_t = lambda a: torch.from_numpy(np.stack(a)).to(self.device, self.dtype)  # noqa: E731
        return as_t([kp for kp, _ in rows]), as_t([jac for _, jac in rows])

    def _row_keypoints_and_jacobian(self, p32: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P,) model dtype, (C,) -> ((70, 3), (70, 3, C)) float64: `keypoints_and_jacobian` of one row."""
        plan = self._column_plans.get(columns.tobytes())
        if plan is None:
            plan = self._column_plans[columns.tobytes()] = _ColumnPlan.of(columns, self.groups["pose"],
                                                                          self.groups["shape"])
        nodes = self._row_node_poses(p32)  # (N + 1, 4, 4)
        num_nodes, num_kp = len(nodes), mhr70.NUM_KEYPOINTS
        blocks = self._row_keypoint_table(p32).reshape(num_nodes, 4, num_kp)
        contributions = nodes[:, :3, :] @ blocks  # (N + 1, 3, 70): each node's share of every keypoint
        keypoints = contributions.sum(0).T  # (70, 3)
        jac = np.zeros((num_kp, 3, len(columns)))
        used = plan.nodes
        if len(used):
            subtree = self._np_subtree[used]  # (U, N + 1)
            sub_points = _matmul(subtree, contributions.reshape(num_nodes, -1)).reshape(len(used), 3, num_kp)
            sub_weights = _matmul(subtree, np.ascontiguousarray(blocks[:, 3]))  # (U, 70)
            lever = sub_points - sub_weights[:, None] * nodes[used, :3, 3][..., None]  # (U, 3, 70)
            pose = self.groups["pose"]
            rotvecs = np.concatenate([p32[0:3], p32[pose]]).astype(np.float64).reshape(-1, 3)[used]
            left_jac = _so3_left_jacobian(rotvecs)  # (U, 3, 3)
            posed = used > 0
            axes = np.empty((len(used), 3, 3))  # column j: the world axis turned by the node's dim j
            axes[~posed] = self._np_root_ref.T @ left_jac[~posed]
            parent_rot = nodes[self._np_node_parent[used[posed]], :3, :3]
            axes[posed] = parent_rot @ self._row_tables(p32).node_left[used[posed] - 1] @ left_jac[posed]
            # d y = (axes @ dw) x lever: column j of a node's block is axes[:, j] x lever
            ax, lv = axes[:, :, :, None], lever[:, :, None, :]  # (U, 3, 3, 1), (U, 3, 1, 70)
            cross = np.stack([ax[:, 1] * lv[:, 2] - ax[:, 2] * lv[:, 1],
                              ax[:, 2] * lv[:, 0] - ax[:, 0] * lv[:, 2],
                              ax[:, 0] * lv[:, 1] - ax[:, 1] * lv[:, 0]])  # (3 xyz, U, 3 axes, 70)
            jac[..., plan.rot_cols] = cross.transpose(3, 0, 1, 2).reshape(num_kp, 3, -1)[..., plan.rot_slot]
        if len(plan.transl_cols):
            weight = blocks[:, 3].sum(0)  # (70,) each keypoint's total skinning weight
            jac[..., plan.transl_cols] = weight[:, None, None] * self._np_root_ref.T[:, plan.transl_axes]
        if len(plan.shape_cols):
            step = 1e-6 if self.dtype == torch.float64 else 1e-3
            for c in plan.shape_cols:
                moved = p32.copy()
                moved[columns[c]] += self._np_dtype(step)
                jac[..., c] = (self._row_keypoints(moved) - keypoints) / step
        return keypoints, jac

    def keypoints(self, params: torch.Tensor) -> torch.Tensor:
        """(B, P) -> (B, 70, 3) MHR-70 keypoints, metres, world frame (Z up); differentiable."""
        params = self._check(params)
        if self._single_row(params):
            return torch.from_numpy(self._row_keypoints(self._as_row(params))).to(self.device, self.dtype)[None]
        tables = self._shape_tables(params)
        nodes = self._node_poses(params, tables)[..., :3, :]  # (B, N + 1, 3, 4)
        rows = nodes.permute(0, 2, 1, 3).flatten(2)  # (B, 3, (N + 1) * 4)
        return (rows @ tables.kp_from_nodes).transpose(1, 2)

    def joint_positions(self, params: torch.Tensor) -> torch.Tensor:
        """(B, P) -> (B, J, 3) Anny bone heads, metres, world frame."""
        return self.bone_poses(params)[..., :3, 3]

    def joint_rotations(self, params: torch.Tensor) -> torch.Tensor:
        """(B, P) -> (B, J, 3, 3) local rotations parent_from_joint (root: world_from_root)."""
        return self._local_rotations(self.bone_poses(params))

    def joint_rotations_and_positions(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P) -> ((B, J, 3, 3) local rotations, (B, J, 3) bone heads): one forward kinematics pass."""
        poses = self.bone_poses(params)
        return self._local_rotations(poses), poses[..., :3, 3]

    def _local_rotations(self, poses: torch.Tensor) -> torch.Tensor:
        """(B, J, 4, 4) world_from_bone -> (B, J, 3, 3) parent_from_joint (root: world_from_root)."""
        world = poses[..., :3, :3]
        local = world[:, self._parents].transpose(-1, -2) @ world
        return torch.cat([world[:, :1], local[:, 1:]], dim=1)
