"""Fitting a `BodyModel` to triangulated points: targets and masks, alignment, start, solver, verdict.

Pure functions over arrays; the fitter node (nodes/fitter.py) holds the per-subject state.
"""
from streamer.fitting.align import Alignment, align_points
from streamer.fitting.init import Start, align_params, choose_start, model_keypoints
from streamer.fitting.objective import FitEvaluation, FitSettings, Prior, evaluate
from streamer.fitting.solve import FitResult, fit_frame, jacobian_method
from streamer.fitting.targets import FitTargets, TargetSettings, fit_targets

__all__ = [
    "Alignment", "FitEvaluation", "FitResult", "FitSettings", "FitTargets", "Prior", "Start", "TargetSettings",
    "align_params", "align_points", "choose_start", "evaluate", "fit_frame", "fit_targets", "jacobian_method",
    "model_keypoints",
]
