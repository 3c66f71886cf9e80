"""The pieces of ``python -m resnest_pl.ablate``: grid files, fit commands, launching, measuring, reporting."""
