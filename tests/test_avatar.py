"""VMC avatar output: bundles (streamer/vmc.py) and the avatar node against a real OSC server.

Stated tolerance: joint positions rebuilt from the received bundles by forward kinematics and the
documented Unity -> stage conversion match the fitted keypoints within 0.2 mm (OSC carries float32);
bone directions from the received rotations alone match within 0.05 degrees.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_server import ThreadingOSCUDPServer

from protocol import Pose, PoseFlag, Verdict
from streamer.body import mhr70
from streamer.humanoid import BONES, PARENTS
from streamer.transport import Publisher
from streamer.vmc import continuous_quaternions, quaternions_xyzw_to_matrices, vmc_bundle, vmc_frame_from_keypoints
from tests.humanoid_poses import posed_keypoints_stage

REPO = Path(__file__).resolve().parents[1]
I = mhr70.index_of
POSITION_TOL_M = 2e-4
DIRECTION_TOL_DEG = 0.05


def unity_to_stage(p: np.ndarray) -> np.ndarray:
    """Documented inverse of stage (x, y, z) -> Unity (-x, z, -y)."""
    p = np.asarray(p, float)
    return np.stack([-p[..., 0], -p[..., 2], p[..., 1]], -1)


def rebuild_stage_joints(bones: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """FK over received local (position, XYZW quaternion) -> world positions (B, 3) stage, rotations (B, 3, 3) Unity."""
    pos = np.zeros((len(BONES), 3))
    rot = np.zeros((len(BONES), 3, 3))
    for b, name in enumerate(BONES):
        p, q = bones[name]
        r = quaternions_xyzw_to_matrices(q)
        if PARENTS[b] < 0:
            pos[b], rot[b] = p, r
        else:
            pos[b] = pos[PARENTS[b]] + rot[PARENTS[b]] @ p
            rot[b] = rot[PARENTS[b]] @ r
    return unity_to_stage(pos), rot


def check_against_keypoints(bones, keypoints_stage: np.ndarray) -> None:
    joints, rot_u = rebuild_stage_joints(bones)
    for bone, kp in (("LeftUpperArm", "left-shoulder"), ("LeftLowerArm", "left-elbow"), ("RightHand", "right-wrist"),
                     ("LeftLowerLeg", "left-knee"), ("RightFoot", "right-ankle"), ("Neck", "neck"),
                     ("RightIndexDistal", "right-index-first-joint"), ("LeftThumbIntermediate", "left-thumb-second-joint")):
        err = np.linalg.norm(joints[BONES.index(bone)] - keypoints_stage[I(kp)])
        assert err < POSITION_TOL_M, (bone, err)
    # Rotations alone: Unity T-pose directions (left arm -X, right arm +X, legs -Y) onto the measured bones.
    for bone, start, end, d0 in (("LeftUpperArm", "left-shoulder", "left-elbow", (-1, 0, 0)),
                                 ("RightLowerArm", "right-elbow", "right-wrist", (1, 0, 0)),
                                 ("LeftUpperLeg", "left-hip", "left-knee", (0, -1, 0))):
        d = keypoints_stage[I(end)] - keypoints_stage[I(start)]
        d_u = np.array([-d[0], d[2], -d[1]]) / np.linalg.norm(d)
        got = rot_u[BONES.index(bone)] @ np.asarray(d0, float)
        angle = np.degrees(np.arccos(np.clip(got @ d_u, -1, 1)))
        assert angle < DIRECTION_TOL_DEG, (bone, angle)


def parse_bundle(dgram: bytes) -> list[tuple[str, list]]:
    bundle = OscBundle(dgram)
    return [(m.address, list(m.params)) for m in bundle]


def bones_of(messages) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {a[0]: (np.array(a[1:4]), np.array(a[4:8])) for addr, a in messages if addr == "/VMC/Ext/Bone/Pos"}


def test_bundle_is_well_formed_vmc():
    kp = posed_keypoints_stage(np.random.default_rng(0), n=1)[0]
    messages = parse_bundle(vmc_bundle(vmc_frame_from_keypoints(kp), time_s=1.5))
    addresses = [a for a, _ in messages]
    assert addresses[0] == "/VMC/Ext/Root/Pos" and messages[0][1][0] == "root" and len(messages[0][1]) == 8
    assert addresses[-2:] == ["/VMC/Ext/OK", "/VMC/Ext/T"]
    assert messages[-2][1] == [1] and messages[-1][1] == [pytest.approx(1.5)]
    bone_msgs = [a for a in messages if a[0] == "/VMC/Ext/Bone/Pos"]
    assert sorted(a[1][0] for a in bone_msgs) == sorted(BONES)
    assert all(len(a[1]) == 8 and all(isinstance(v, float) for v in a[1][1:]) for a in bone_msgs)
    assert all(abs(np.linalg.norm(a[1][4:8]) - 1) < 1e-5 for a in bone_msgs)
    check_against_keypoints(bones_of(messages), kp)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_quaternion_sign_continuity(seed):
    rng = np.random.default_rng(seed)
    prev = rng.normal(size=(55, 4))
    q = rng.normal(size=(55, 4))
    out = continuous_quaternions(q, prev)
    assert (np.sum(out * prev, -1) >= 0).all()
    assert np.allclose(np.abs(out), np.abs(q))


def make_pose(keypoints: np.ndarray, i: int) -> Pose:
    return Pose(
        t_ns=time.time_ns(), frame_index=i, person_id=0, body_model="test", params=np.zeros(0, np.float32),
        keypoints=keypoints.astype(np.float32), joint_rotations=np.tile(np.float32([0, 0, 0, 1]), (1, 1)),
        world_from_root=np.eye(4, dtype=np.float32), flags=np.full(70, PoseFlag.MEASURED, np.uint8),
        loss=0.1, data_loss=0.1, n_valid=70, verdict=Verdict.GOOD, iterations=3,
    )


@pytest.mark.slow
def test_avatar_node_sends_vmc_bundles_to_a_real_osc_server():
    # ThreadingOSCUDPServer handles each datagram (one bundle) in its own thread: group by thread.
    bundles: list[list] = []
    partial: dict[int, list] = {}
    lock = threading.Lock()

    def on_any(address, *args):
        with lock:
            parts = partial.setdefault(threading.get_ident(), [])
            parts.append((address, list(args)))
            if address == "/VMC/Ext/T":
                bundles.append(partial.pop(threading.get_ident()))

    dispatcher = Dispatcher()
    dispatcher.set_default_handler(on_any)
    server = ThreadingOSCUDPServer(("127.0.0.1", 0), dispatcher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    poses = posed_keypoints_stage(np.random.default_rng(7), n=2).astype(np.float32).astype(float)
    pub = Publisher("tcp://127.0.0.1:0", name="fit")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodes.avatar", "--name", "avatar", "--input", f"fit={pub.endpoint}",
         "--settings-json", f'{{"port": {port}, "rate_hz": 30.0}}', "--seconds", "20", "--log-level", "WARNING"],
        cwd=REPO, env=env,
    )
    try:
        phase_a: int | None = None
        deadline = time.monotonic() + 15
        i = 0
        while time.monotonic() < deadline:
            keypoints = poses[0] if phase_a is None else poses[1]
            pub.publish(make_pose(keypoints, i))
            pub.service()
            i += 1
            time.sleep(1 / 30)
            with lock:
                n_bundles = len(bundles)
            if phase_a is None and n_bundles >= 10:
                phase_a = n_bundles  # pose A is established; switch to pose B
            if phase_a is not None and n_bundles >= phase_a + 15:
                break
        assert phase_a is not None, f"no VMC bundles arrived (avatar exit code {proc.poll()})"
    finally:
        proc.terminate()
        proc.wait(10)
        pub.close()
        server.shutdown()
    assert proc.returncode == 0
    with lock:
        got = list(bundles)
    assert len(got) >= phase_a + 15
    for parts in got:
        assert parts[0][0] == "/VMC/Ext/Root/Pos" and [a for a, _ in parts[-2:]] == ["/VMC/Ext/OK", "/VMC/Ext/T"]
        assert sum(1 for a, _ in parts if a == "/VMC/Ext/Bone/Pos") == 55
    times = [parts[-1][1][0] for parts in got]
    assert len(set(times)) == len(times)  # one bundle per frame, each with its own time
    check_against_keypoints(bones_of(got[phase_a - 1]), poses[0])  # arrived before the switch
    check_against_keypoints(bones_of(got[int(np.argmax(times))]), poses[1])


@pytest.mark.slow
def test_real_body_model_poses_round_trip_through_vmc_bundles():
    """Keypoints of the real Anny body in random poses (stage frame, Z up) through the documented conversion."""
    torch = pytest.importorskip("torch")
    from streamer.body.anny_model import AnnyBody

    body = AnnyBody(device="cpu")
    generator = torch.Generator().manual_seed(0)
    params = body.default_params(3)
    params = params + 0.3 * torch.randn(params.shape, generator=generator, dtype=params.dtype) * body.movable
    with torch.no_grad():
        keypoints = body.keypoints(params).numpy().astype(float)
    previous = None
    for kp in keypoints:
        frame = vmc_frame_from_keypoints(kp, previous)
        previous = frame.local_rotations
        check_against_keypoints(bones_of(parse_bundle(vmc_bundle(frame, 0.0))), kp)
