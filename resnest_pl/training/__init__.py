"""Training: the LightningModule and the parts it is built from.

``module`` (``ResNeStClassifier``), ``optim`` (the paper's SGD, parameter groups, layer decay), ``schedule``
(learning-rate scaling, warmup and cosine decay), ``ema`` (the fused weight average), ``augment`` with ``mixing``
and ``erasing`` (batch augmentation on the device), ``evaluation`` (accuracy, flip TTA, per-class metrics' hookup)
with ``class_metrics`` (their files and figures), ``random_state`` (generator states and per-rank seeds),
``compile`` (the torch.compile / SyncBatchNorm guard), ``options`` (range checks) and ``run_record`` (what a
checkpoint records).

Nothing is imported here, so that ``resnest_pl.training.run_record`` loads without Lightning (the exporter's
case); import the submodules themselves. The callbacks the module attaches live in :mod:`resnest_pl.callbacks`,
which imports only this package's leaf modules (``ema``, ``optim``, ``evaluation``), never ``module``.
"""
