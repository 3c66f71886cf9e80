"""``ResNeStClassifier``: the paper's ImageNet training recipe as a LightningModule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightning_fabric.utilities.throughput import measure_flops
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.cli import OptimizerCallable
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torchmetrics import MeanMetric

from ..callbacks import FreezeBackbone, FusedEMAWeightAveraging, RecordProvenance
from ..models import IncompatibleCheckpointError, create_model
from ..models.weights import load_line
from ..runs import classes_mismatch
from .augment import augment_batch
from .compile import check_compile_with_sync_batchnorm, uses_sync_batchnorm
from .erasing import EraseMode, RandomErasing
from .evaluation import accuracy_metrics, hflip_logits, per_class_metrics, report_per_class
from .mixing import BatchMixer
from .optim import NesterovSGD, apply_lr_scales, optimizer_from_spec, parameter_groups
from .options import check_options
from .random_state import random_state, rank_seed, set_random_state
from .run_record import RUN_KEY, check_architecture, run_record, saved_hyperparameters
from .schedule import scale_to_global_batch, total_steps, warmup_cosine_scheduler, warmup_steps

NOT_NORMALISED = (
    "the batches hold uint8 pixels but there is no data module with mean and std to normalise them; "
    "pass datamodule=... to the trainer, or yield normalised float images"
)


class ResNeStClassifier(pl.LightningModule):
    """Image classification with a ResNeSt backbone and the paper's training recipe.

    Batches are ``(images, targets)`` or ``(images, targets, num_skipped)`` for fit/validate/test and
    ``(images, indices)`` for predict, with float images: the data modules' ``uint8`` pixels are decoded and
    normalised on the device by the data module's ``on_after_batch_transfer`` (see ``ImageDataModule``), and
    ``uint8`` images that reach the steps without one are refused.

    Args:
        model_name: a name from ``resnest_pl.models.list_models()``.
        num_classes: classifier outputs; must match the data.
        pretrained: ``True`` for the published weights, or a file / URL (a Lightning checkpoint, a ``.safetensors``
            file or a folder written by ``python -m resnest_pl.export`` work too);
            a classifier of another size is re-initialised, so this is how to fine-tune on new classes.
        model_overrides: architecture options passed to ``create_model`` (radix, dropblock_prob, ...).
        optimizer: builds the optimizer from parameter groups; its ``lr`` is per 256 images when
            ``scale_lr``. Defaults to the paper's Nesterov SGD (lr 0.1, momentum 0.9, weight decay 1e-4).
        scale_lr: multiply the optimizer's lr (and ``min_lr``) by global batch / 256, the global batch being
            per-device batch x devices x nodes x ``accumulate_grad_batches``.
        warmup_epochs: linear warmup from 0 (may be fractional); then cosine decay to ``min_lr``, per step.
        min_lr: final learning rate, in the optimizer's lr units.
        label_smoothing: smoothing of the training targets.
        mixup_alpha: Mixup Beta parameter (0 = off; the paper uses 0.2).
        cutmix_alpha: CutMix Beta parameter (0 = off).
        mix_prob: probability of mixing a batch when Mixup or CutMix is on.
        switch_prob: probability of CutMix rather than Mixup when both are on.
        mix_off_epochs: train the last this-many epochs without mixing.
        erase_prob: random erasing (timm's ``--reprob``): the probability that a training image gets boxes
            erased, per image, on the device after normalisation and before mixing (see
            :class:`~resnest_pl.training.erasing.RandomErasing`); 0 = off. Never in validation, test or predict.
        erase_mode: what fills the boxes (timm's ``--remode``): "pixel" per-pixel normal noise, "rand" one
            normal colour per box, "const" zeros (the mean colour).
        erase_count: each erased image gets 1 to this many boxes, sharing the erased area (timm's ``--recount``).
        ema_decay: keep an exponential moving average of the weights (e.g. 0.9998) through Lightning's
            ``EMAWeightAveraging`` (with :class:`~resnest_pl.training.ema.FusedEMAModel`'s update); validation
            and the final weights use it. ``None`` = off.
        ema_every_n_steps: update the average every this many optimizer steps, with ``ema_decay ** n``: the
            update reads and writes every weight twice, which costs more than a small model's step.
        channels_last: NHWC memory format for weights and inputs. Measure before using it on GPUs: cuDNN's
            NHWC kernels for grouped convolutions made resnest50d much slower in timm's benchmarks.
        compile: ``torch.compile`` the backbone in place at setup (checkpoint keys stay the backbone's). Refused
            with SyncBatchNorm. ``DropBlockSchedule`` clamps its ``increments`` to dynamo's recompile limit (each
            new drop probability recompiles).
        class_metrics: per-class accuracy and the confusion matrix at the end of every validate/test epoch (see
            ``resnest_pl.training.class_metrics``); ``None`` turns them on up to 100 classes.
        tta_hflip: in validate, test and predict (never in training), average the softmax of each image and of its
            mirror image (see :func:`~resnest_pl.training.evaluation.hflip_logits`).
        layer_decay: layer-wise learning-rate decay for fine-tuning, in (0, 1]: the head learns at the optimizer's
            lr, ``layer4`` at lr x decay, ``layer3`` at lr x decay^2, ... the stem at lr x decay^5 (the schedule
            then multiplies all alike; ``min_lr`` is the head's). ``None`` = off.
        freeze_backbone_epochs: train only the classifier for this many epochs, with the backbone's BatchNorm
            statistics frozen, then everything (:class:`resnest_pl.callbacks.FreezeBackbone`). 0 = off.
    """

    def __init__(
        self,
        model_name: str = "resnest50",
        num_classes: int = 1000,
        pretrained: bool | str = False,
        model_overrides: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = NesterovSGD,
        scale_lr: bool = True,
        warmup_epochs: float = 5.0,
        min_lr: float = 0.0,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        switch_prob: float = 0.5,
        mix_off_epochs: int = 0,
        erase_prob: float = 0.0,
        erase_mode: EraseMode = "pixel",
        erase_count: int = 1,
        ema_decay: float | None = None,
        ema_every_n_steps: int = 1,
        channels_last: bool = False,
        compile: bool = False,
        class_metrics: bool | None = None,
        tta_hflip: bool = False,
        layer_decay: float | None = None,
        freeze_backbone_epochs: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_options(self.hparams)
        if isinstance(optimizer, Mapping):
            optimizer = optimizer_from_spec(optimizer)
        self.optimizer_factory = optimizer
        self.model = create_model(model_name, num_classes=num_classes, pretrained=pretrained, **(model_overrides or {}))
        if self.model.loaded_from:
            rank_zero_info(self.model.loaded_from)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.mixer = BatchMixer(num_classes, mixup_alpha, cutmix_alpha, mix_prob, switch_prob, label_smoothing)
        self.eraser = RandomErasing(erase_prob, erase_mode, erase_count)
        self.val_metrics = accuracy_metrics(num_classes, "val/")
        self.test_metrics = accuracy_metrics(num_classes, "test/")
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.per_class = per_class_metrics(class_metrics, num_classes)
        self._mix_seed = 0
        self._rng_to_restore: dict[str, torch.Tensor] | None = None
        # Names of the classifier's outputs: from the data module at setup, from the checkpoint once one loads.
        self.class_names: list[str] | None = None
        self.loaded_provenance: dict[str, Any] | None = None  # the loaded checkpoint's (resnest_pl.provenance)
        self._compiled = False
        self._input_shape: tuple[int, ...] | None = None
        self._flops: dict[tuple[tuple[int, ...], bool], int] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Under precision "bf16-true" / "16-true" the parameters are half-width floats; the data arrive as float32.
        if images.is_floating_point() and images.dtype != self.dtype:
            images = images.to(self.dtype)
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    # ---- setup -------------------------------------------------------------------------------------------

    def configure_callbacks(self) -> list[Callback]:
        callbacks: list[Callback] = [RecordProvenance()]
        if self.hparams.freeze_backbone_epochs:
            callbacks.append(FreezeBackbone(self.hparams.freeze_backbone_epochs))
        if self.hparams.ema_decay is not None:
            callbacks.append(FusedEMAWeightAveraging(self.hparams.ema_decay, self.hparams.ema_every_n_steps))
        return callbacks

    def setup(self, stage: str) -> None:
        data_classes = getattr(self.trainer.datamodule, "num_classes", None)
        if data_classes is not None and data_classes != self.hparams.num_classes:
            raise ValueError(
                f"the data has {data_classes} classes but the model was built with num_classes="
                f"{self.hparams.num_classes}; set model.num_classes={data_classes}"
            )
        names = getattr(self.trainer.datamodule, "class_names", None)
        if names and len(names) == self.hparams.num_classes:
            self.class_names = list(names)
        if stage == "fit":
            if self.hparams.mix_off_epochs and self.trainer.max_epochs in (None, -1):
                raise ValueError("mix_off_epochs counts back from trainer.max_epochs; set max_epochs")
            # Mixing draws from a generator seeded by (this seed, rank, epoch, batch), so a resumed run
            # mixes exactly like an uninterrupted one.
            self._mix_seed = torch.initial_seed()
            # seed_everything gives every DDP process the same seed: sample i of every rank would draw the same
            # dropout and DropBlock masks. One process keeps its stream (and its bit-exact resume).
            if self.trainer.world_size > 1:
                torch.manual_seed(rank_seed(self._mix_seed, self.global_rank, 0))
        # After the callbacks' setup, so EMAWeightAveraging deep-copies the uncompiled backbone.
        if self.hparams.compile and not self._compiled:
            check_compile_with_sync_batchnorm(True, uses_sync_batchnorm(self.trainer, self))
            self.model.compile()
            self._compiled = True

    def configure_optimizers(self) -> dict[str, Any]:
        if self.trainer.train_dataloader is None:
            self.trainer.fit_loop.setup_data()  # the batch size and epoch length come from the DataLoader
        steps = total_steps(self.trainer)
        optimizer = self.optimizer_factory(parameter_groups(self.model, self.hparams.layer_decay))
        lr = optimizer.param_groups[0]["lr"]
        apply_lr_scales(optimizer)
        if self.hparams.min_lr > lr:
            raise ValueError(f"min_lr ({self.hparams.min_lr}) exceeds the optimizer's lr ({lr}); lower min_lr")
        rank_zero_info(scale_to_global_batch(optimizer, self.trainer, lr, self.hparams.scale_lr))
        warmup = warmup_steps(self.trainer, self.hparams.warmup_epochs)
        final_ratio = self.hparams.min_lr / lr if lr > 0 else 0.0
        scheduler = warmup_cosine_scheduler(optimizer, warmup, steps, final_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ---- steps -------------------------------------------------------------------------------------------

    @staticmethod
    def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        images, targets, *rest = batch
        return _normalised(images), targets, rest[0] if rest else None

    def _mixing_active(self) -> bool:
        if not self.mixer.enabled:
            return False
        if not self.hparams.mix_off_epochs:
            return True
        return self.current_epoch < self.trainer.max_epochs - self.hparams.mix_off_epochs

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._rng_to_restore is not None:
            # The checkpoint holds rank 0's generator: rank 0 continues its stream exactly; the other ranks start
            # streams of their own, seeded by the resumed step (reproducible, but not the uninterrupted run's).
            if self.global_rank == 0:
                set_random_state(self._rng_to_restore, self.device)
            else:
                torch.manual_seed(rank_seed(self._mix_seed, self.global_rank, self.trainer.global_step))
            self._rng_to_restore = None

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        # Never None, which DDP cannot skip: the data modules replace unreadable training images (ImageDataModule).
        images, targets, skipped = self._unpack(batch)
        self._input_shape = tuple(images.shape)
        # Here rather than in the data module's on_after_batch_transfer, which has no batch index: the step's
        # position seeds them.
        mixing = self._mixing_active()
        position = (self._mix_seed, self.global_rank, self.current_epoch, batch_idx)
        images, soft_targets = augment_batch(images, targets, self.eraser, self.mixer, mixing, position)
        if soft_targets is not None:
            loss = F.cross_entropy(self(images).float(), soft_targets)
        else:
            loss = F.cross_entropy(self(images).float(), targets, label_smoothing=self.hparams.label_smoothing)
        size = images.shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
        self._log_skipped("data/skipped_images", skipped, size)
        return loss

    def _evaluate(self, batch: Any, stage: str) -> None:
        images, targets, skipped = self._unpack(batch)
        if images.shape[0] == 0:  # evaluation drops unreadable images; here all of a batch were
            self._log_skipped(f"{stage}/skipped_images", skipped, 1)
            return
        self._input_shape = tuple(images.shape)
        logits = self._eval_logits(images)
        metrics, loss = (self.val_metrics, self.val_loss) if stage == "val" else (self.test_metrics, self.test_loss)
        loss.update(F.cross_entropy(logits, targets), weight=images.shape[0])
        metrics.update(logits, targets)
        if self.per_class is not None:
            self.per_class[stage].update(logits, targets)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage == "val")
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val")
        self._log_skipped(f"{stage}/skipped_images", skipped, images.shape[0])

    def _eval_logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.tta_hflip:
            return hflip_logits(self, images)
        return self(images).float()

    def _log_skipped(self, key: str, skipped: torch.Tensor | None, size: int) -> None:
        if skipped is not None:
            count = skipped.float().sum()
            self.log(key, count, on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True, batch_size=size)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._report_class_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._report_class_metrics("test")

    def _report_class_metrics(self, stage: str) -> None:
        if self.per_class is not None:
            report_per_class(self, self.per_class, stage)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """Class probabilities of ``(images, indices)`` batches, returned with their dataset indices."""
        images, indices = batch
        images = _normalised(images)
        return {"indices": indices, "probs": self._eval_logits(images).softmax(dim=-1)}

    # ---- checkpoints -------------------------------------------------------------------------------------

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Before Lightning's strict load, whose RuntimeError lists hundreds of keys.
        check_architecture(checkpoint, self.hparams.model_name, self.hparams.model_overrides, self.state_dict)
        self.loaded_provenance = (checkpoint.get(RUN_KEY) or {}).get("provenance")
        resume = (checkpoint.get(RUN_KEY) or {}).get("resume") or {}
        if "mix_seed" in resume:
            self._mix_seed = int(resume["mix_seed"])
        # Applied at the first training batch, after whatever the resumed run does first (sanity check).
        self._rng_to_restore = resume.get("random_state")
        weight = checkpoint.get("state_dict", {}).get("model.fc.weight")
        stage, path = (self._trainer.state.fn, self._trainer.ckpt_path) if self._trainer else (None, None)
        if weight is not None and weight.shape[0] != self.hparams.num_classes:
            raise IncompatibleCheckpointError(classes_mismatch(weight.shape[0], self.hparams.num_classes, stage, path))
        if path is not None:
            rank_zero_info(load_line(path, checkpoint, "resuming its training state" if stage == "fit" else None))
        names = (checkpoint.get(RUN_KEY) or {}).get("class_names")
        if names and len(names) == self.hparams.num_classes:
            self.class_names = list(names)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Merged over what callbacks added first (RecordProvenance's provenance).
        checkpoint[RUN_KEY] = {**(checkpoint.get(RUN_KEY) or {}), **run_record(self.trainer, self.class_names)}
        # What a resumed run needs to draw the same mixing and the same dropout / DropBlock masks.
        checkpoint[RUN_KEY]["resume"] = {"mix_seed": self._mix_seed, "random_state": random_state(self.device)}
        if checkpoint.get("hyper_parameters"):
            checkpoint["hyper_parameters"] = saved_hyperparameters(checkpoint["hyper_parameters"])

    # ---- throughput --------------------------------------------------------------------------------------

    @property
    def flops_per_batch(self) -> int | None:
        """FLOPs of one step on the last batch shape seen (forward + backward in training, forward
        otherwise), counted by ``torch.utils.flop_counter`` on a meta-device copy; read by
        ``ImageThroughputMonitor`` for FLOP/s and MFU."""
        if self._input_shape is None:
            return None
        key = (self._input_shape, self.training)
        if key not in self._flops:
            # ThroughputMonitor asks from inside inference_mode; counting the backward needs autograd.
            with torch.inference_mode(False), torch.enable_grad(), torch.device("meta"):
                model = create_model(
                    self.hparams.model_name,
                    num_classes=self.hparams.num_classes,
                    **(self.hparams.model_overrides or {}),
                )
                images = torch.empty(self._input_shape)
                model.train(self.training)
                loss_fn = torch.Tensor.sum if self.training else None
                self._flops[key] = measure_flops(model, lambda: model(images), loss_fn)
        return self._flops[key]


def _normalised(images: torch.Tensor) -> torch.Tensor:
    """``images``, refused when they are ``uint8`` pixels that no data module normalised."""
    if images.dtype == torch.uint8:
        raise ValueError(NOT_NORMALISED)
    return images
