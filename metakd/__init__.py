"""metakd: meta-learned few-shot anomaly detection with per-task knowledge distillation."""

__version__ = "0.1.0"
