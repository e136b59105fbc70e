"""Judging a trained student: sampling and scoring (``evaluate``), loading a run (``runs``), the paired
statistics (``stats``) and the verdict built on them (``verdict``), report.md/report.json and the grid
(``report``), ablations (``ablate``) and exporting a student that runs without rats (``export``).

May import: ``rats_core.training`` and everything below it. Never ``cli``.
"""
