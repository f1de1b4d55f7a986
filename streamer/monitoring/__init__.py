"""Operator monitoring: stage status and alerts (pure), the terminal table, the Rerun view."""
from streamer.monitoring.status import Alert, CameraRow, MonitorSettings, StageRow, StageStatus, StatusReport
from streamer.monitoring.table import render_table

__all__ = ["Alert", "CameraRow", "MonitorSettings", "StageRow", "StageStatus", "StatusReport", "render_table"]
