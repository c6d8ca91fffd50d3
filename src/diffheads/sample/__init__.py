"""Sampling runtime: model loading, animate, test-set generation and streaming."""
