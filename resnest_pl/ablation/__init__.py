"""Ablation grids (``python -m resnest_pl.ablation``): grid files, fit commands, launching, measuring, reporting,
the sweep / SLURM emitters, and the runner (``run``) that ties them together."""
