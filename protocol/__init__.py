"""The wire contract of the stage: message types and their msgpack codec. Imports nothing of ours."""
from protocol.codec import DecodeError, decode, decode_record, encode, encode_record, topic_of
from protocol.messages import (
    MESSAGE_TYPES,
    CameraCalibration,
    Heartbeat,
    Keypoints2D,
    NodeStats,
    Person2D,
    PersonTruth,
    Points3D,
    Pose,
    PoseFlag,
    RigCalibration,
    Truth,
    Verdict,
)

__all__ = [
    "MESSAGE_TYPES",
    "CameraCalibration",
    "DecodeError",
    "Heartbeat",
    "Keypoints2D",
    "NodeStats",
    "Person2D",
    "PersonTruth",
    "Points3D",
    "Pose",
    "PoseFlag",
    "RigCalibration",
    "Truth",
    "Verdict",
    "decode",
    "decode_record",
    "encode",
    "encode_record",
    "topic_of",
]
