"""Processes and partitioned tensors: the process group and each rank's place in it (``distributed``),
reading and writing ZeRO-3 partitioned parameters a few at a time (``zero``).

May import: nothing of rats but ``rats_core.errors``; everything else may import it.
"""
