"""Processes and partitioned tensors: the process group, its timeouts and each rank's place in it, nodes
included (``distributed``), heartbeats that notice a rank that vanished (``peers``), reading and writing ZeRO-3
partitioned parameters a few at a time (``zero``).

May import: nothing of rats but ``rats_core.errors``; everything else may import it.
"""
