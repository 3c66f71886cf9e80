"""``ResNeStClassifier``: the paper's ImageNet training recipe as a LightningModule."""

from __future__ import annotations

import functools
import importlib
import itertools
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightning_fabric.utilities.throughput import measure_flops
from pytorch_lightning.callbacks import Callback, EMAWeightAveraging
from pytorch_lightning.cli import OptimizerCallable
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from .class_metrics import class_metric_collection, class_metrics_enabled, report_class_metrics
from .data.device_decode import decode_batch
from .data.encoded import EncodedImages
from .data.transforms import normalize
from .erasing import EraseMode, RandomErasing
from .finetune import FreezeBackbone, apply_lr_scales, check_finetune_options, split_by_depth
from .mixing import BatchMixer
from .models import IncompatibleCheckpointError, create_model, describe_model, same_architecture
from .models.weights import RUN_RECORD_KEY, load_line, state_mismatch
from .prediction import class_names_for
from .provenance import RecordProvenance
from .runs import classes_mismatch
from .schedules import REFERENCE_BATCH, linear_scaled_lr, warmup_cosine_scheduler
from .tta import hflip_logits

RUN_KEY = RUN_RECORD_KEY  # the checkpoint key of what a run was trained on (``run_record``), read by the exporter
# Data module attributes recorded in checkpoints, when the data module has them.
DATA_FIELDS = (
    "root",
    "num_classes",
    "crop_size",
    "eval_crop_size",
    "crop_pct",
    "interpolation",
    "mean",
    "std",
    "batch_size",
)

# Lightning warns whenever a module overrides this hook and a data module is passed; normalising there is the plan.
warnings.filterwarnings("ignore", message="You have overridden `on_after_batch_transfer` in `LightningModule` but")

# Tells random erasing's generator apart from mixing's, both seeded by the training step's position.
ERASING = 1

# How to evaluate, chosen per run: left out of checkpoints, whose hyper-parameters LightningCLI applies over the
# command line's (`validate --ckpt_path X --model.tta_hflip true` would otherwise evaluate without the flip).
EVALUATION_SWITCHES = ("class_metrics", "tta_hflip")

# Parameters of these layers are never weight-decayed (the paper decays conv and linear weights only).
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)


def random_state(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's global generator states (CPU, and ``device``'s when it is a GPU) as tensors, so that a
    checkpoint holding them still loads with ``weights_only=True``."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_random_state(state: Mapping[str, torch.Tensor], device: torch.device) -> None:
    """Restore what :func:`random_state` saved."""
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def rank_seed(seed: int, rank: int, step: int) -> int:
    """torch's seed for DDP process ``rank`` of a run seeded with ``seed``, starting or resuming at optimizer
    step ``step``: distinct per rank, so the ranks draw different dropout and DropBlock masks."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0])


class FusedEMAModel(AveragedModel):
    """An exponential moving average of a model's parameters and buffers, updated without waiting for the device.

    ``AveragedModel`` with a per-tensor ``avg_fn`` launches a few kernels per tensor (about 480 tensors in a
    ResNeSt-50) and reads its update count on the host twice per update, which waits for the GPU. Here the floating
    tensors are updated by one ``torch._foreach_lerp_``, the count is mirrored on the host (read once, after creation
    or a state-dict load), and integer buffers (BatchNorm's ``num_batches_tracked``) are copied, not averaged.
    ``lerp`` computes ``ema + (1 - decay) * (model - ema)``, equal to ``decay * ema + (1 - decay) * model`` but for
    the last bit. The state dict is ``AveragedModel``'s, so checkpoints of either load into the other.
    The average lives on ``device`` (the model's when ``None``): ``_foreach_lerp_`` takes no tensors of two devices.
    """

    def __init__(self, model: nn.Module, decay: float, device: torch.device | None = None) -> None:
        super().__init__(model, device=device, use_buffers=True)
        self.decay = decay
        self._updates: int | None = 0  # n_averaged, mirrored on the host

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self._updates = None  # n_averaged changes: read it again at the next update
        return super().load_state_dict(*args, **kwargs)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        if self._updates is None:
            self._updates = int(self.n_averaged)
        averaged = [t.detach() for t in itertools.chain(self.module.parameters(), self.module.buffers())]
        current = [t.detach() for t in itertools.chain(model.parameters(), model.buffers())]
        floats = [i for i, t in enumerate(averaged) if t.is_floating_point()]
        others = [i for i, t in enumerate(averaged) if not t.is_floating_point()]
        if self._updates == 0:
            torch._foreach_copy_(averaged, current)
        else:
            weight = 1.0 - self.decay
            torch._foreach_lerp_([averaged[i] for i in floats], [current[i] for i in floats], weight)
            if others:
                torch._foreach_copy_([averaged[i] for i in others], [current[i] for i in others])
        self.n_averaged += 1
        self._updates += 1


class FusedEMAWeightAveraging(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging`` with :class:`FusedEMAModel` as the average, updated every
    ``every_n_steps`` optimizer steps (the first, then every n-th) with ``decay ** every_n_steps``, which keeps the
    average's time constant in steps. Validation and the final weights use the average, as in Lightning's."""

    def __init__(self, decay: float, every_n_steps: int = 1) -> None:
        super().__init__(decay=decay, update_every_n_steps=every_n_steps)
        self.decay = decay**every_n_steps

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Before the strategy moves the module, Lightning reports the device it will move it to as its ``device``:
        # the average is built there, as Lightning's own ``WeightAveraging.setup`` does.
        if stage == "fit":
            self._average_model = FusedEMAModel(pl_module, self.decay, device=self._device or pl_module.device)


class NesterovSGD(torch.optim.SGD):
    """SGD with the paper's settings as defaults: lr 0.1 per 256 images, Nesterov momentum 0.9, weight decay 1e-4."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        nesterov: bool = True,
    ) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def optimizer_spec(optimizer: Any) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` of an optimizer class or ``functools.partial`` of one (the form
    LightningCLI stores), so that checkpoints hold no pickled code and load with ``weights_only=True``;
    ``None`` for any other callable."""
    init_args: dict[str, Any] = {}
    if isinstance(optimizer, functools.partial) and not optimizer.args:
        optimizer, init_args = optimizer.func, dict(optimizer.keywords)
    if not isinstance(optimizer, type):
        return None
    return {"class_path": f"{optimizer.__module__}.{optimizer.__qualname__}", "init_args": init_args}


def optimizer_from_spec(spec: Mapping[str, Any]) -> OptimizerCallable:
    """The optimizer callable described by :func:`optimizer_spec`'s output."""
    module, _, name = spec["class_path"].rpartition(".")
    return functools.partial(getattr(importlib.import_module(module), name), **spec.get("init_args", {}))


def parameter_groups(model: nn.Module, layer_decay: float | None = None) -> list[dict[str, Any]]:
    """Two optimizer groups: weights to decay, and normalisation parameters, biases and any other
    1-d parameter with ``weight_decay=0``. Chosen by layer type and shape, not by name, so the stem's
    and the shortcuts' BatchNorms are found too. With ``layer_decay`` each is split further by depth, each part
    with ``lr_scale = layer_decay ** depth`` (:func:`resnest_pl.finetune.split_by_depth`)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if isinstance(module, NORM_LAYERS) or param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [group for group in groups if group["params"]]
    return groups if layer_decay is None else split_by_depth(groups, model, layer_decay)


def uses_sync_batchnorm(trainer: pl.Trainer, module: nn.Module) -> bool:
    """Whether the trainer converts BatchNorm to SyncBatchNorm (``sync_batchnorm=True``; done after the module's
    ``setup``) or the module already has one."""
    return getattr(trainer.strategy, "_layer_sync", None) is not None or any(
        isinstance(m, nn.SyncBatchNorm) for m in module.modules()
    )


def check_compile_with_sync_batchnorm(compile: bool, sync_batchnorm: bool) -> None:
    """Refuse ``torch.compile`` with SyncBatchNorm: dynamo breaks the graph at every SyncBatchNorm (or fails,
    pytorch/pytorch#107372), so the compiled network would be dozens of small graphs, slower than eager."""
    if compile and sync_batchnorm:
        raise ValueError(
            "model.compile=true with SyncBatchNorm (trainer.sync_batchnorm=true): torch.compile breaks the graph at "
            "every SyncBatchNorm or fails (pytorch issue 107372); set trainer.sync_batchnorm=false (per-device batch "
            "statistics) or model.compile=false"
        )


def global_batch_size(trainer: pl.Trainer) -> int:
    """Images per optimizer step: per-device batch x devices x nodes x gradient accumulation."""
    loader = trainer.train_dataloader
    per_device = getattr(loader, "batch_size", None) or getattr(
        getattr(loader, "batch_sampler", None), "batch_size", None
    )
    if not per_device:
        raise ValueError(
            "cannot read the batch size of the training DataLoader to scale the learning rate; give the "
            "total learning rate in the optimizer and set model.scale_lr=false"
        )
    return int(per_device) * trainer.world_size * trainer.accumulate_grad_batches


def accuracy_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Top-1 and top-5 accuracy over all samples (top-k clipped to the number of classes)."""
    return MetricCollection(
        {
            "acc1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "acc5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
        },
        prefix=prefix,
    )


def _plain(value: Any) -> Any:
    """``value`` as built-in types only, so that checkpoints load with ``weights_only=True``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def run_record(trainer: pl.Trainer, class_names: list[str] | None) -> dict[str, Any]:
    """What a checkpoint was trained on and how, beyond the module's hyper-parameters: the class names, the
    data module's class and settings (``DATA_FIELDS``), the schedule length and global batch, and the
    metrics at save time. Only built-in types."""
    data = trainer.datamodule
    record: dict[str, Any] = {"class_names": list(class_names) if class_names else None}
    if data is not None:
        record["data"] = {"class_path": f"{type(data).__module__}.{type(data).__qualname__}"}
        record["data"].update({k: _plain(getattr(data, k)) for k in DATA_FIELDS if hasattr(data, k)})
    try:
        batch: int | None = global_batch_size(trainer)
    except (ValueError, AttributeError, TypeError):
        batch = None
    record["trainer"] = {
        "max_epochs": trainer.max_epochs,
        "max_steps": trainer.max_steps,
        "global_batch": batch,
        "world_size": trainer.world_size,
        "precision": str(trainer.precision),
    }
    record["metrics"] = {
        k: float(v) for k, v in trainer.callback_metrics.items() if isinstance(v, torch.Tensor) and v.numel() == 1
    }
    return record


class ResNeStClassifier(pl.LightningModule):
    """Image classification with a ResNeSt backbone and the paper's training recipe.

    Batches are ``(images, targets)`` or ``(images, targets, num_skipped)`` for fit/validate/test and
    ``(images, indices)`` for predict. ``uint8`` images (the data modules', see ``ImageDataModule``) are
    normalised on the device in :meth:`on_after_batch_transfer` with the data module's ``mean`` and ``std``;
    float images are taken as already normalised.

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
            :class:`~resnest_pl.erasing.RandomErasing`); 0 = off. Never in validation, test or predict.
        erase_mode: what fills the boxes (timm's ``--remode``): "pixel" per-pixel normal noise, "rand" one
            normal colour per box, "const" zeros (the mean colour).
        erase_count: each erased image gets 1 to this many boxes, sharing the erased area (timm's ``--recount``).
        ema_decay: keep an exponential moving average of the weights (e.g. 0.9998) through Lightning's
            ``EMAWeightAveraging`` (with :class:`FusedEMAModel`'s update); validation and the final weights use it.
            ``None`` = off.
        ema_every_n_steps: update the average every this many optimizer steps, with ``ema_decay ** n``: the
            update reads and writes every weight twice, which costs more than a small model's step.
        channels_last: NHWC memory format for weights and inputs. Measure before using it on GPUs: cuDNN's
            NHWC kernels for grouped convolutions made resnest50d much slower in timm's benchmarks.
        compile: ``torch.compile`` the backbone in place at setup (checkpoint keys stay the backbone's). Refused
            with SyncBatchNorm. ``DropBlockSchedule`` clamps its ``increments`` to dynamo's recompile limit (each
            new drop probability recompiles).
        class_metrics: per-class accuracy and the confusion matrix at the end of every validate/test epoch (see
            ``resnest_pl.class_metrics``); ``None`` turns them on up to 100 classes.
        tta_hflip: in validate, test and predict (never in training), average the softmax of each image and of its
            mirror image (see ``resnest_pl.tta``).
        layer_decay: layer-wise learning-rate decay for fine-tuning, in (0, 1]: the head learns at the optimizer's
            lr, ``layer4`` at lr x decay, ``layer3`` at lr x decay^2, ... the stem at lr x decay^5 (the schedule
            then multiplies all alike; ``min_lr`` is the head's). ``None`` = off.
        freeze_backbone_epochs: train only the classifier for this many epochs, with the backbone's BatchNorm
            statistics frozen, then everything (:class:`resnest_pl.finetune.FreezeBackbone`). 0 = off.
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
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2; got {num_classes}")
        if warmup_epochs < 0 or min_lr < 0 or mix_off_epochs < 0:
            raise ValueError(
                "warmup_epochs, min_lr and mix_off_epochs must be >= 0; "
                f"got {warmup_epochs}, {min_lr}, {mix_off_epochs}"
            )
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), e.g. 0.9998, or be null to disable; got {ema_decay}")
        if ema_every_n_steps < 1:
            raise ValueError(f"ema_every_n_steps must be >= 1; got {ema_every_n_steps}")
        check_finetune_options(layer_decay, freeze_backbone_epochs)
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
        self.per_class = (
            nn.ModuleDict({stage: class_metric_collection(num_classes) for stage in ("val", "test")})
            if class_metrics_enabled(class_metrics, num_classes)
            else None
        )
        self._mix_seed = 0
        self._normalization: tuple[torch.Tensor, torch.Tensor] | None = None  # the data's (mean, std)
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
        mean, std = (getattr(self.trainer.datamodule, key, None) for key in ("mean", "std"))
        self._normalization = None
        if mean is not None and std is not None:  # on the device the strategy will move the module to
            mean_t, std_t = (torch.tensor(v, dtype=torch.float32, device=self.device) for v in (mean, std))
            self._normalization = (mean_t, std_t)
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
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise ValueError("the learning-rate schedule needs a finite length; set trainer.max_epochs or max_steps")
        optimizer = self.optimizer_factory(parameter_groups(self.model, self.hparams.layer_decay))
        lr = optimizer.param_groups[0]["lr"]
        apply_lr_scales(optimizer)
        if self.hparams.min_lr > lr:
            raise ValueError(f"min_lr ({self.hparams.min_lr}) exceeds the optimizer's lr ({lr}); lower min_lr")
        if self.hparams.scale_lr:
            batch = global_batch_size(self.trainer)
            for group in optimizer.param_groups:
                group["lr"] = linear_scaled_lr(group["lr"], batch)
            rank_zero_info(
                f"learning rate: {lr:g} per {REFERENCE_BATCH} images x global batch {batch} / {REFERENCE_BATCH} = "
                f"{optimizer.param_groups[0]['lr']:g} (scale_lr: true; set --model.scale_lr false to use lr as given)"
            )
        else:
            rank_zero_info(f"learning rate: {lr:g} as given (scale_lr: false)")
        warmup_steps = 0
        if self.hparams.warmup_epochs:
            batches = self.trainer.num_training_batches
            if not math.isfinite(batches):
                raise ValueError("warmup_epochs needs a training DataLoader with a length; set warmup_epochs=0")
            steps_per_epoch = math.ceil(batches / self.trainer.accumulate_grad_batches)
            warmup_steps = round(self.hparams.warmup_epochs * steps_per_epoch)
        final_ratio = self.hparams.min_lr / lr if lr > 0 else 0.0
        scheduler = warmup_cosine_scheduler(optimizer, warmup_steps, int(total_steps), final_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ---- steps -------------------------------------------------------------------------------------------

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalise ``uint8`` images on the device: ``(images / 255 + pixel_shift - mean) / std``.

        The loaders ship raw pixels (a quarter of float32's bytes; Lightning copies pinned batches with
        ``non_blocking=True``), plus, in training with PCA lighting, a fourth element ``pixel_shift``, consumed
        here. Random erasing and mixing follow in ``training_step``, on the normalised images. With
        ``decode_on_device`` the training batches hold JPEG bytes, decoded and cropped here first
        (:func:`resnest_pl.data.device_decode.decode_batch`).
        """
        if isinstance(batch[0], EncodedImages):
            batch = decode_batch(batch, self.device)
        images = batch[0]
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            return batch
        if self._normalization is None:
            raise ValueError(
                "the batches hold uint8 pixels but there is no data module with mean and std to normalise them; "
                "pass datamodule=... to the trainer, or yield normalised float images"
            )
        mean, std = self._normalization
        if mean.device != images.device:  # moved once: a copy per batch from pageable memory would sync the GPU
            self._normalization = mean, std = mean.to(images.device), std.to(images.device)
        shift = batch[3] if len(batch) > 3 else None
        images = normalize(images, mean, std, pixel_shift=shift)
        return (images, *batch[1:3])

    @staticmethod
    def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        images, targets, *rest = batch
        return images, targets, rest[0] if rest else None

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
        if self.eraser.enabled:
            # Here rather than in on_after_batch_transfer, which has no batch index: the step's position seeds the
            # boxes and noise, so a resumed run erases as the uninterrupted one on every rank. Before mixing, as in
            # torchvision's reference and timm without its prefetcher (whose loader mixes before it erases).
            rng = np.random.default_rng([self._mix_seed, self.global_rank, self.current_epoch, batch_idx, ERASING])
            images = self.eraser(images, rng)
        if self._mixing_active():
            rng = np.random.default_rng([self._mix_seed, self.global_rank, self.current_epoch, batch_idx])
            images, soft_targets = self.mixer(images, targets, rng)
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
            names = class_names_for(self, self.trainer.datamodule, self.hparams.num_classes)
            report_class_metrics(self.trainer, self.per_class[stage], stage, names)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """Class probabilities of ``(images, indices)`` batches, returned with their dataset indices."""
        images, indices = batch
        return {"indices": indices, "probs": self._eval_logits(images).softmax(dim=-1)}

    # ---- checkpoints -------------------------------------------------------------------------------------

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Before Lightning's strict load, whose RuntimeError lists hundreds of keys.
        self._check_architecture(checkpoint)
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

    def _check_architecture(self, checkpoint: dict[str, Any]) -> None:
        ours = describe_model(self.hparams.model_name, self.hparams.model_overrides)
        hparams = checkpoint.get("hyper_parameters") or {}
        if "model_name" in hparams:
            theirs = (hparams["model_name"], hparams.get("model_overrides") or {})
            if not same_architecture(*theirs, self.hparams.model_name, self.hparams.model_overrides or {}):
                raise IncompatibleCheckpointError(
                    f"the checkpoint is {describe_model(*theirs)} but the model is {ours}; use the checkpoint's "
                    "model settings (model.model_name, model.model_overrides) to resume or evaluate it, or start "
                    "a new run with model.pretrained=<checkpoint> to fine-tune its weights in the same architecture"
                )
            return
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("model.fc.")}
        state = {k: v for k, v in checkpoint.get("state_dict", {}).items() if not k.startswith("model.fc.")}
        problems = state_mismatch(own, state)
        if problems:
            raise IncompatibleCheckpointError(
                f"the checkpoint's weights do not fit the model {ours}: {problems}; use the model settings it "
                "was trained with"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Merged over what callbacks added first (RecordProvenance's provenance).
        checkpoint[RUN_KEY] = {**(checkpoint.get(RUN_KEY) or {}), **run_record(self.trainer, self.class_names)}
        # What a resumed run needs to draw the same mixing and the same dropout / DropBlock masks.
        checkpoint[RUN_KEY]["resume"] = {"mix_seed": self._mix_seed, "random_state": random_state(self.device)}
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        if not hparams:
            return
        for key in EVALUATION_SWITCHES:
            hparams.pop(key, None)
        # The weights are in the checkpoint: loading it must not fetch the pretrained source again.
        if hparams.get("pretrained"):
            hparams["pretrained"] = False
        if callable(hparams.get("optimizer")):
            spec = optimizer_spec(hparams.pop("optimizer"))
            if spec is None:
                rank_zero_warn(
                    "the optimizer is neither a class nor a functools.partial of one, so the checkpoint cannot "
                    "record it; pass optimizer=... again when loading it to train further"
                )
            else:
                hparams["optimizer"] = spec
        checkpoint["hyper_parameters"] = hparams

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
