"""``python -m resnest_pl.tune``: a hyper-parameter search with Optuna whose trials are ordinary fits.

The modules: ``space`` (the search-space file), ``recipe`` (the fit command lines and the check of the search
keys against the CLI), ``pruning`` (the callback inside each fit that reports ``val/acc1`` to the study),
``study`` (storage, study, trial count), ``trials`` (one trial: its fit and its outcome), ``outputs``
(``best.yaml``, ``trials.csv``, plots) and ``command`` (the command line).
"""


class TuneError(Exception):
    """A mistake in the command, the recipe or the search space: shown as one ``error:`` line, exit status 2."""
