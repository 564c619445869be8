from secure_ml.report.dashboard import dashboard_figure
from secure_ml.report.gates import Gate, check_gates, parse_gates
from secure_ml.report.table import scorecard_table

__all__ = ["Gate", "check_gates", "dashboard_figure", "parse_gates", "scorecard_table"]
