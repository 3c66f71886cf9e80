"""Host-memory reuse on glibc: freed big blocks stay in the heap and are not page-faulted back in."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from resnest_pl.callbacks import KeepHostMemory
from resnest_pl.host_memory import keep_freed_host_memory
from resnest_pl.training.module import ResNeStClassifier

from ..helpers import TINY_SMALL_INPUT, make_trainer

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)

# Page faults per allocation of a 32 MB tensor (written, then freed), before and after the setting.
# Run in a fresh interpreter: the setting is process-wide and the test must see malloc's defaults first.
FAULTS_SCRIPT = textwrap.dedent(
    """
    import json, resource, torch
    from resnest_pl.host_memory import keep_freed_host_memory

    def faults_per_allocation(n=5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            torch.ones(8 << 20)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n

    plain = faults_per_allocation()
    applied = keep_freed_host_memory()
    for _ in range(2):
        faults_per_allocation()  # the heap grows to hold the block once
    print(json.dumps({"plain": plain, "applied": applied, "kept": faults_per_allocation()}))
    """
)


@glibc_only
def test_freed_blocks_are_reused_without_page_faults() -> None:
    done = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    assert result["applied"] is True
    # By default glibc unmaps the 32 MB block on free: every allocation faults its 8192 pages back in.
    assert result["plain"] > 4000
    assert result["kept"] < 100


def test_invalid_thresholds_are_rejected() -> None:
    with pytest.raises(ValueError, match="threshold_bytes must be > 0"):
        keep_freed_host_memory(threshold_bytes=0)
    with pytest.raises(ValueError, match="top_pad_bytes >= 0"):
        keep_freed_host_memory(top_pad_bytes=-1)


@glibc_only
def test_callback_applies_the_setting_on_cpu_runs() -> None:
    images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,))
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    callback = KeepHostMemory()
    model = ResNeStClassifier("resnest14d", num_classes=4, model_overrides=TINY_SMALL_INPUT)
    make_trainer(max_epochs=1, limit_val_batches=0, callbacks=[callback]).fit(model, loader)
    assert callback.active
