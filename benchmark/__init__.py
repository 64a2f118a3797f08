"""Shortcut-learning audit for chest X-ray classifiers: train, evaluate, explain, store."""

__version__ = "0.1.0"
