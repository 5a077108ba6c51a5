"""Health: disks, network, clock, integrity: one monitor and its alarms."""
