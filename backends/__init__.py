"""Editing backends, one sub-package per family."""
