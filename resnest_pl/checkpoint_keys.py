"""Keys this template adds to Lightning checkpoints; a module of its own so that readers of checkpoints (export,
inspection) need not import the LightningModule."""

# What a run was trained on and how (``resnest_pl.module.run_record``), its provenance, and what a resume needs.
RUN_KEY = "resnest_pl"
