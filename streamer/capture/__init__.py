"""Capture: camera sources, latest-frame grabbing, person boxes, and the estimators that turn frames
into `kp2d/<cam>` persons.

Modules: sources (video file, V4L2 webcam, image folder + timestamp file, replay of a take, one camera of
the synthetic stage), latest (latest-frame grabber; sequential reader for offline), estimator (the
interface: views of N cameras in, persons per view out), sam3d (SAM-3D Body adapter), mediapipe_pose
(CPU fallback), boxes (track hints and the detector policy), onnx_detector (user-supplied ONNX person
detector). Heavy optional packages are imported only by the module that needs them.
"""
