"""Retarget MHR-70 keypoints to a Unity `HumanBodyBones` skeleton (positions + rotations), model-free.

Works for any body model because it reads only keypoint positions. Frames:
- stage world: right-handed, Z up (the rig's world), metres.
- avatar frame ("Y-up"): right-handed, +Y up, +Z forward of the T-pose, the performer's left at +X
  (glTF convention). `stage_to_yup` maps stage world into it: (x, y, z) -> (x, z, -y).
Unity's left-handed frame is one step further (`streamer.vmc`); BVH export uses the Y-up frame.

Rotations are relative to a defined T-pose (arms along +-X, legs and spine along -+Y, facing +Z,
palms down). For each bone, its world rotation R maps the T-pose to the current pose:
- frame bones (Hips, spine chain, Neck, Head, hands, feet): R = F_now @ F_tpose.T, each F an
  orthonormal frame from a primary direction (e.g. hip line, wrist -> middle knuckle) and a secondary one;
- limb bones (shoulders, arms, legs, fingers): R = swing(R_parent d0 -> d) @ R_parent, the shortest
  rotation taking the parent-carried T-pose direction d0 onto the measured bone direction d;
- leaves (toes, eyes, jaw): R = R_parent.
local = R_parent.T @ R. Local positions are the offsets to the parent in the parent's rotated frame, so
forward kinematics of (local position, local rotation) reproduces the joint positions.
Spine, Chest and UpperChest are placed on the hip->neck line (keypoints have no vertebrae): Spine a
fraction `SPINE_FRACTION` of the way along the Hips frame's up axis, the others evenly up to the neck.
Bones whose keypoints are missing (non-finite) keep the parent's rotation and position.

Arrays: keypoints (T, 70, 3) float; outputs per bone in `BONES` order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamer.body import mhr70

__all__ = [
    "BONES",
    "PARENTS",
    "Skeleton",
    "forward_kinematics",
    "tpose_direction",
    "tpose_keypoints",
    "joint_positions_yup",
    "retarget",
    "stage_to_yup",
    "yup_to_stage",
]

SPINE_FRACTION = 0.12
_EPS = 1e-9

# (name, parent, kind, T-pose primary d0, T-pose secondary s0) in the Y-up avatar frame.
# kind: "frame" (primary + secondary), "swing" (direction only), "leaf" (parent rotation).
_L, _R = 1.0, -1.0  # sign of +X for the performer's left / right side
_SQ = 1 / np.sqrt(2)
_SPEC: list[tuple[str, str | None, str, tuple, tuple]] = [
    ("Hips", None, "frame", (-1, 0, 0), (0, 1, 0)),
    ("Spine", "Hips", "frame", (0, 1, 0), (-1, 0, 0)),
    ("Chest", "Spine", "frame", (0, 1, 0), (-1, 0, 0)),
    ("UpperChest", "Chest", "frame", (0, 1, 0), (-1, 0, 0)),
    ("Neck", "UpperChest", "frame", (0, 1, 0), (-1, 0, 0)),
    ("Head", "Neck", "frame", (-1, 0, 0), (0, 0, 1)),
    ("LeftEye", "Head", "leaf", (), ()),
    ("RightEye", "Head", "leaf", (), ()),
    ("Jaw", "Head", "leaf", (), ()),
]
for _side, _sx in (("Left", _L), ("Right", _R)):
    _SPEC += [
        (f"{_side}UpperLeg", "Hips", "swing", (0, -1, 0), ()),
        (f"{_side}LowerLeg", f"{_side}UpperLeg", "swing", (0, -1, 0), ()),
        (f"{_side}Foot", f"{_side}LowerLeg", "frame", (0, 0, 1), (-_sx, 0, 0)),
        (f"{_side}Toes", f"{_side}Foot", "leaf", (), ()),
        (f"{_side}Shoulder", "UpperChest", "swing", (_sx, 0, 0), ()),
        (f"{_side}UpperArm", f"{_side}Shoulder", "swing", (_sx, 0, 0), ()),
        (f"{_side}LowerArm", f"{_side}UpperArm", "swing", (_sx, 0, 0), ()),
        (f"{_side}Hand", f"{_side}LowerArm", "frame", (_sx, 0, 0), (0, 0, 1)),
    ]
    for _finger in ("Thumb", "Index", "Middle", "Ring", "Little"):
        _d0 = (_sx * _SQ, 0, _SQ) if _finger == "Thumb" else (_sx, 0, 0)
        _parent = f"{_side}Hand"
        for _seg in ("Proximal", "Intermediate", "Distal"):
            _SPEC.append((f"{_side}{_finger}{_seg}", _parent, "swing", _d0, ()))
            _parent = f"{_side}{_finger}{_seg}"

BONES: tuple[str, ...] = tuple(s[0] for s in _SPEC)
_BONE_INDEX = {b: i for i, b in enumerate(BONES)}
PARENTS: tuple[int, ...] = tuple(-1 if s[1] is None else _BONE_INDEX[s[1]] for s in _SPEC)
_KIND = tuple(s[2] for s in _SPEC)
_PARENT_OR_SELF = [max(p, 0) for p in PARENTS]
_D0 = {s[0]: np.asarray(s[3], float) / np.linalg.norm(s[3]) for s in _SPEC if s[3]}
_S0 = {s[0]: np.asarray(s[4], float) for s in _SPEC if s[4]}

_I = mhr70.index_of
_FINGER_KP = {"Thumb": "thumb", "Index": "index", "Middle": "middle", "Ring": "ring", "Little": "pinky"}
_SEG_KP = {"Proximal": ("third-joint", "second-joint"), "Intermediate": ("second-joint", "first-joint"),
           "Distal": ("first-joint", "tip")}



def tpose_direction(bone: str) -> np.ndarray:
    """(3,) unit vector, Y-up frame: where `bone` points in the T-pose (towards its child, or forward
    for toes, eyes and jaw, up for the Hips and Head)."""
    if bone not in _BONE_INDEX:
        raise KeyError(f"unknown bone {bone!r}; known: {', '.join(BONES)}")
    if bone in ("Hips", "Head"):
        return np.array([0.0, 1.0, 0.0])
    if _KIND[_BONE_INDEX[bone]] == "leaf":
        return np.array([0.0, 0.0, 1.0])
    return _D0[bone].copy()


_STAGE_TO_YUP = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])


def stage_to_yup(points: np.ndarray) -> np.ndarray:
    """(..., 3) stage world (right-handed, Z up) -> Y-up avatar frame (right-handed): (x, z, -y)."""
    return np.asarray(points, float) @ _STAGE_TO_YUP.T


def yup_to_stage(points: np.ndarray) -> np.ndarray:
    """Inverse of `stage_to_yup`: (x, y, z) -> (x, -z, y)."""
    return np.asarray(points, float) @ _STAGE_TO_YUP


@dataclass(frozen=True)
class Skeleton:
    """A posed HumanBodyBones skeleton in the Y-up avatar frame, per frame t and bone b (`BONES` order).

    positions: (T, B, 3) metres, world. world_rotations / local_rotations: (T, B, 3, 3).
    local_positions: (T, B, 3) metres, offset to the parent in the parent's rotated frame (Hips: world).
    valid: (T, B) bool, False where the bone's keypoints were missing and the parent's pose was held.
    """

    positions: np.ndarray
    world_rotations: np.ndarray
    local_rotations: np.ndarray
    local_positions: np.ndarray
    valid: np.ndarray


def _mid(kp: np.ndarray, a: str, b: str) -> np.ndarray:
    return 0.5 * (kp[:, _I(a)] + kp[:, _I(b)])


def joint_positions_yup(keypoints: np.ndarray) -> dict[str, np.ndarray]:
    """Measured anchor points of the bones from keypoints (T, 70, 3) in the Y-up frame: name -> (T, 3).

    Holds every bone's start except the synthetic Spine/Chest/UpperChest (set by `retarget`),
    plus the `*End` targets that only give directions.
    """
    kp = keypoints
    p = {
        "Hips": _mid(kp, "left-hip", "right-hip"),
        "Neck": kp[:, _I("neck")],
        "Head": _mid(kp, "left-ear", "right-ear"),
        "HeadEnd": kp[:, _I("nose")],
        "LeftEye": kp[:, _I("left-eye")],
        "RightEye": kp[:, _I("right-eye")],
        "Jaw": kp[:, _I("nose")],
    }
    for side, s in (("Left", "left"), ("Right", "right")):
        p[f"{side}UpperLeg"] = kp[:, _I(f"{s}-hip")]
        p[f"{side}LowerLeg"] = kp[:, _I(f"{s}-knee")]
        p[f"{side}Foot"] = kp[:, _I(f"{s}-ankle")]
        p[f"{side}Toes"] = _mid(kp, f"{s}-big-toe-tip", f"{s}-small-toe-tip")
        p[f"{side}Shoulder"] = kp[:, _I("neck")]
        p[f"{side}UpperArm"] = kp[:, _I(f"{s}-shoulder")]
        p[f"{side}LowerArm"] = kp[:, _I(f"{s}-elbow")]
        p[f"{side}Hand"] = kp[:, _I(f"{s}-wrist")]
        for finger, fk in _FINGER_KP.items():
            for seg, (start, end) in _SEG_KP.items():
                p[f"{side}{finger}{seg}"] = kp[:, _I(f"{s}-{fk}-{start}")]
            p[f"{side}{finger}End"] = kp[:, _I(f"{s}-{fk}-tip")]
    return p


def _unit(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalise (T, 3) rows; returns (unit, ok) with ok False for non-finite or ~zero rows."""
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    ok = np.isfinite(n[..., 0]) & (n[..., 0] > 1e-6)
    return np.where(ok[..., None], v / np.where(ok, n[..., 0], 1.0)[..., None], 0.0), ok


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross product of (..., 3) arrays (np.cross is slow for small batches)."""
    out = np.empty(np.broadcast_shapes(a.shape, b.shape))
    out[..., 0] = a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1]
    out[..., 1] = a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2]
    out[..., 2] = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    return out


def _frame(primary: np.ndarray, secondary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, 3, 3) frames with columns e1 = primary, e2 = secondary orthogonalised, e3 = e1 x e2."""
    e1, ok1 = _unit(primary)
    e2, ok2 = _unit(secondary - np.sum(secondary * e1, -1, keepdims=True) * e1)
    e3 = _cross(e1, e2)
    return np.stack([e1, e2, e3], axis=-1), ok1 & ok2


def _swing(a: np.ndarray, b: np.ndarray, fallback_axis: np.ndarray) -> np.ndarray:
    """(T, 3, 3) shortest rotations taking unit vectors a onto b; for a ~ -b, pi about fallback_axis."""
    v = _cross(a, b)
    c = np.sum(a * b, -1)
    vx = np.zeros(a.shape[:-1] + (3, 3))
    vx[..., 0, 1], vx[..., 0, 2] = -v[..., 2], v[..., 1]
    vx[..., 1, 0], vx[..., 1, 2] = v[..., 2], -v[..., 0]
    vx[..., 2, 0], vx[..., 2, 1] = -v[..., 1], v[..., 0]
    opposite = c < -1 + 1e-9
    k = 1.0 / np.where(opposite, 1.0, 1.0 + c)
    rot = np.eye(3) + vx + (vx @ vx) * k[..., None, None]
    if opposite.any():
        axis, _ = _unit(fallback_axis - np.sum(fallback_axis * a, -1, keepdims=True) * a)
        flip = 2.0 * axis[..., :, None] * axis[..., None, :] - np.eye(3)
        rot = np.where(opposite[..., None, None], flip, rot)
    return rot


_F0_T = {b: _frame(_D0[b][None], _S0[b][None])[0][0].T for b in _S0}  # T-pose frames, transposed


def retarget(keypoints_stage: np.ndarray) -> Skeleton:
    """Pose the HumanBodyBones skeleton from keypoints (T, 70, 3), metres, stage world (Z up).

    Returns a `Skeleton` in the Y-up avatar frame (see module docstring).
    """
    kp_stage = np.asarray(keypoints_stage, float)
    if kp_stage.ndim == 2:
        kp_stage = kp_stage[None]
    if kp_stage.ndim != 3 or kp_stage.shape[1:] != (mhr70.NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints: expected (T, {mhr70.NUM_KEYPOINTS}, 3), got {kp_stage.shape}")
    kp = stage_to_yup(kp_stage)
    n_frames, n_bones = kp.shape[0], len(BONES)
    anchor = joint_positions_yup(kp)
    pos = np.zeros((n_frames, n_bones, 3))
    world = np.tile(np.eye(3), (n_frames, n_bones, 1, 1))
    valid = np.zeros((n_frames, n_bones), bool)

    across_hips = anchor["RightUpperLeg"] - anchor["LeftUpperLeg"]
    across_shoulders = anchor["RightUpperArm"] - anchor["LeftUpperArm"]
    hips_up = anchor["Neck"] - anchor["Hips"]
    torso_len = np.linalg.norm(hips_up, axis=-1, keepdims=True)

    def place(bones: str | list[str], positions: np.ndarray) -> None:
        """Set bone positions (T, 3) or (T, n, 3); missing ones sit at their parent."""
        idx = [_BONE_INDEX[bones]] if isinstance(bones, str) else [_BONE_INDEX[b] for b in bones]
        positions = positions.reshape(n_frames, len(idx), 3)
        parents = [PARENTS[b] for b in idx]
        held = np.where(np.array(parents)[None, :, None] >= 0, pos[:, [max(p, 0) for p in parents]], 0.0)
        pos[:, idx] = np.where(np.all(np.isfinite(positions), -1)[..., None], positions, held)

    def set_frame(bone: str, primary, secondary) -> None:
        b = _BONE_INDEX[bone]
        f_now, ok = _frame(primary, secondary)
        rot = f_now @ _F0_T[bone]
        parent = PARENTS[b]
        held = world[:, parent] if parent >= 0 else np.eye(3)
        world[:, b] = np.where(ok[:, None, None], rot, held)
        valid[:, b] = ok

    def set_swing(bones: str | list[str], targets: np.ndarray) -> None:
        """Swing bones (whose parents are already posed) towards targets (T, 3) or (T, n, 3)."""
        bones = [bones] if isinstance(bones, str) else bones
        idx = [_BONE_INDEX[b] for b in bones]
        parent_rot = world[:, [PARENTS[b] for b in idx]]  # (T, n, 3, 3)
        d, ok = _unit(targets.reshape(n_frames, len(idx), 3) - pos[:, idx])
        a = (parent_rot @ np.stack([_D0[b] for b in bones])[None, :, :, None])[..., 0]
        rot = _swing(a, np.where(ok[..., None], d, a), parent_rot[..., :, 2]) @ parent_rot
        world[:, idx] = np.where(ok[..., None, None], rot, parent_rot)
        valid[:, idx] = ok

    def set_leaf(bone: str) -> None:
        b = _BONE_INDEX[bone]
        world[:, b] = world[:, PARENTS[b]]
        valid[:, b] = np.all(np.isfinite(pos[:, b]), -1)

    # Torso: Hips frame from the hip line, spine chain on the hip -> neck line.
    place("Hips", anchor["Hips"])
    set_frame("Hips", across_hips, hips_up)
    hips_y = world[:, 0, :, 1]
    spine = pos[:, 0] + SPINE_FRACTION * torso_len * hips_y
    neck = anchor["Neck"]
    chain = {"Spine": spine, "Chest": spine + (neck - spine) / 3, "UpperChest": spine + 2 * (neck - spine) / 3}
    blends = {"Spine": 1 / 3, "Chest": 2 / 3, "UpperChest": 1.0}
    nxt = {"Spine": "Chest", "Chest": "UpperChest", "UpperChest": "Neck"}
    for bone in ("Spine", "Chest", "UpperChest"):
        place(bone, chain[bone])
        target = chain[nxt[bone]] if nxt[bone] in chain else neck
        w = blends[bone]
        h, _ = _unit(across_hips)
        s, _ = _unit(across_shoulders)
        set_frame(bone, target - chain[bone], (1 - w) * h + w * s)
    place("Neck", neck)
    set_frame("Neck", anchor["Head"] - neck, across_shoulders)
    place("Head", anchor["Head"])
    ear_line = kp[:, _I("right-ear")] - kp[:, _I("left-ear")]
    set_frame("Head", ear_line, anchor["HeadEnd"] - anchor["Head"])
    for leaf in ("LeftEye", "RightEye", "Jaw"):
        place(leaf, anchor[leaf])
        set_leaf(leaf)

    sides = ("Left", "Right")

    def both(fmt: str) -> list[str]:
        return [fmt.format(side=side) for side in sides]

    def anchors(names: list[str]) -> np.ndarray:
        return np.stack([anchor[n] for n in names], axis=1)

    # Limbs, both sides at once, one chain level at a time.
    for chain in (("UpperLeg", "LowerLeg", "Foot"), ("Shoulder", "UpperArm", "LowerArm", "Hand")):
        for bone, child in zip(chain, chain[1:]):
            place(both("{side}" + bone), anchors(both("{side}" + bone)))
            set_swing(both("{side}" + bone), anchors(both("{side}" + child)))
        place(both("{side}" + chain[-1]), anchors(both("{side}" + chain[-1])))
    for side in sides:
        s = side.lower()
        big, small = kp[:, _I(f"{s}-big-toe-tip")], kp[:, _I(f"{s}-small-toe-tip")]
        set_frame(f"{side}Foot", anchor[f"{side}Toes"] - anchor[f"{side}Foot"], big - small)
        place(f"{side}Toes", anchor[f"{side}Toes"])
        set_leaf(f"{side}Toes")
        knuckle = lambda f: kp[:, _I(f"{s}-{f}-third-joint")]  # noqa: E731
        set_frame(f"{side}Hand", knuckle("middle") - anchor[f"{side}Hand"], knuckle("index") - knuckle("pinky"))
    fingers = [f"{side}{finger}" for side in sides for finger in _FINGER_KP]
    for seg, nxt in (("Proximal", "Intermediate"), ("Intermediate", "Distal"), ("Distal", "End")):
        bones = [f + seg for f in fingers]
        place(bones, anchors(bones))
        set_swing(bones, anchors([f + nxt for f in fingers]))

    parent_rot_t = np.swapaxes(world[:, _PARENT_OR_SELF], -1, -2)
    local_rot = parent_rot_t @ world
    local_pos = (parent_rot_t @ (pos - pos[:, _PARENT_OR_SELF])[..., None])[..., 0]
    local_rot[:, 0], local_pos[:, 0] = world[:, 0], pos[:, 0]  # the root is its own parent
    return Skeleton(pos, world, local_rot, local_pos, valid)


def tpose_keypoints() -> np.ndarray:
    """(70, 3) MHR-70 keypoints, metres, stage world (Z up), of the T-pose rotations are relative to.

    A 1.7 m body standing at the origin facing stage -Y (+Z of the Y-up frame), its left at +X, arms
    straight out along X, palms down, thumbs forward at 45 degrees, feet and toes forward.
    `retarget` of it gives identity local rotations for every bone.
    """
    kp = np.full((70, 3), np.nan)
    kp[_I("nose")] = (0, 1.65, 0.1)
    for s, x in (("left", 1.0), ("right", -1.0)):
        kp[_I(f"{s}-ear")] = (x * 0.08, 1.65, 0)
        kp[_I(f"{s}-eye")] = (x * 0.03, 1.7, 0.08)
        kp[_I(f"{s}-hip")] = (x * 0.1, 0.9, 0)
        kp[_I(f"{s}-knee")] = (x * 0.1, 0.5, 0)
        kp[_I(f"{s}-ankle")] = (x * 0.1, 0.1, 0)
        kp[_I(f"{s}-heel")] = (x * 0.1, 0.05, -0.05)
        kp[_I(f"{s}-big-toe-tip")] = (x * 0.07, 0.1, 0.15)
        kp[_I(f"{s}-small-toe-tip")] = (x * 0.13, 0.1, 0.15)
        kp[_I(f"{s}-shoulder")] = (x * 0.2, 1.5, 0)
        kp[_I(f"{s}-elbow")] = (x * 0.5, 1.5, 0)
        kp[_I(f"{s}-wrist")] = (x * 0.75, 1.5, 0)
        for finger, z in (("index", 0.03), ("middle", 0.0), ("ring", -0.02), ("pinky", -0.04)):
            base = np.array((x * 0.85, 1.5, z))
            for joint, dx in (("third-joint", 0), ("second-joint", 0.04), ("first-joint", 0.07), ("tip", 0.09)):
                kp[_I(f"{s}-{finger}-{joint}")] = base + (x * dx, 0, 0)
        thumb_dir = np.array((x, 0, 1)) / np.sqrt(2)
        for joint, d in (("third-joint", 0.03), ("second-joint", 0.06), ("first-joint", 0.09), ("tip", 0.11)):
            kp[_I(f"{s}-thumb-{joint}")] = np.array((x * 0.75, 1.5, 0)) + d * thumb_dir
        kp[_I(f"{s}-olecranon")] = (x * 0.5, 1.5, -0.03)
        kp[_I(f"{s}-cubital-fossa")] = (x * 0.5, 1.5, 0.03)
        kp[_I(f"{s}-acromion")] = (x * 0.21, 1.52, 0)
    kp[_I("neck")] = (0, 1.5, 0)
    return yup_to_stage(kp)


def forward_kinematics(
    local_rotations: np.ndarray, local_positions: np.ndarray, parents: tuple[int, ...] = PARENTS
) -> tuple[np.ndarray, np.ndarray]:
    """World (positions (T, B, 3), rotations (T, B, 3, 3)) from local ones; parents precede children."""
    world_r = np.empty_like(local_rotations)
    world_p = np.empty_like(local_positions)
    for b, parent in enumerate(parents):
        if parent < 0:
            world_r[:, b] = local_rotations[:, b]
            world_p[:, b] = local_positions[:, b]
        else:
            world_r[:, b] = world_r[:, parent] @ local_rotations[:, b]
            world_p[:, b] = world_p[:, parent] + np.einsum("tij,tj->ti", world_r[:, parent], local_positions[:, b])
    return world_p, world_r
