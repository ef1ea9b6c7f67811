"""fvagent: ID-card and live-face verification agent for the Guangxi maternal-and-child platform."""

__version__ = "0.1.0"
