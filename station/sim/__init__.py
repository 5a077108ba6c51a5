"""Simulated body-worn recorders and their media."""
