"""Capture: camera sources, latest-frame grabbing, person boxes, and the estimators that turn frames
into `kp2d/<cam>` persons (SAM-3D Body adapter, MediaPipe CPU fallback).

Modules: sources (video, webcam, image folder, replay; the synthetic stage lives in streamer/synthetic),
latest (latest-frame grabber), estimator (the interface), sam3d, mediapipe_pose, boxes (track hints and
detector policy), onnx_detector. Heavy optional packages are imported only by the module that needs them.
"""
