"""Cameras: OpenCV capture and a fake camera."""
