"""Store: the data disks and their identity, the one durable-write primitive, sidecars,
recovery after power loss, the second copy, the scrubber and SMART.
"""
