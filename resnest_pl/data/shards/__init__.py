"""Streaming shards: ``python -m resnest_pl.data.shards --root <image folder> --out <dir>``.

Reading 1.28 M small JPEG files from a shared file system does not scale to many nodes: every epoch is millions
of metadata lookups and small random reads. The converter packs a class-folder data set into a few hundred
large, immutable chunk files per split that nodes read sequentially (or stream from object storage), and
:class:`~resnest_pl.data.ShardedDataModule` trains from them.

``format`` (the format, its layout and ``meta.json``), ``write`` (the converter), ``datamodule``
(:class:`ShardedDataModule`, which trains from them) and ``__main__`` (the command line).
"""
