"""Tasks: how a model is evaluated (classification now; detection through mmdet later)."""
