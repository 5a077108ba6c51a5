"""Devices: which recorder sits on which physical port (udev, the simulated bus), mounting
its card (through the helper), learning the ports, and the ports' slots and collectors.
"""
