"""Errors a user can act on. Each message names the problem and the fix."""


class PTQBenchError(Exception):
    """Base class for user-facing errors (bad config, missing data, bad weights)."""


class ConfigError(PTQBenchError):
    """An unknown name or an out-of-range value in the config."""


class DataNotFoundError(PTQBenchError):
    """A dataset path that does not exist or lacks the expected layout."""


class WeightsError(PTQBenchError):
    """Weights that cannot be found, or that do not match the model."""


class CalibrationError(PTQBenchError):
    """Calibration failed: non-finite activations, or a quantizer used before calibration."""
