"""Ablation grids (``python -m resnest_pl.ablation``): grid files, fit commands, measuring, reporting,
the sweep / SLURM emitters, and the runner (``run``) that ties them together; :mod:`resnest_pl.launch` starts the
fits."""
