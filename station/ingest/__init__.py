"""Ingest: one docking's collector (identify, register, set the clock, collect, clear), the
transfer of each file, registration, and the shared-link priority.
"""
