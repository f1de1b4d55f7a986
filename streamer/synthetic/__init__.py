"""The synthetic capture stage: virtual cameras (rig), animated Anny bodies (motion), a detector-like
observation model (observe), put together by `SyntheticStage` (stage) as a capture source with truth."""
from streamer.synthetic.motion import MotionSettings
from streamer.synthetic.observe import ObservationSettings
from streamer.synthetic.rig import RigSettings
from streamer.synthetic.stage import StageSettings, SyntheticStage

__all__ = ["MotionSettings", "ObservationSettings", "RigSettings", "StageSettings", "SyntheticStage"]
