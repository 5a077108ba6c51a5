"""Collection station for police body-worn recorders."""

__version__ = "0.1.0"
