"""The ``last`` checkpoint and resuming from it, as a user (or a cluster) runs the CLI.

Each run is a real ``python -m resnest_pl.cli`` process on the shipped quick start (digits, shuffled and
augmented), interrupted at an exact optimizer step by ``tests.interrupt.SignalAtStep``.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnest_pl.callbacks.checkpointing import check_checkpoint_file

from ..helpers import CONFIGS, QUICK, ROOT, load_checkpoint, run_cli, run_cli_process, signal_at

STEPS_PER_EPOCH = 22  # 1437 training digits in batches of 64, the last one dropped


def resume_fit_args(root: Path, *extra: str, epochs: int = 2) -> list[str]:
    return [
        "fit",
        "--config",
        str(CONFIGS / "quickstart.yaml"),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger",
        "false",
        "--trainer.max_epochs",
        str(epochs),
        "--model.mixup_alpha",
        "0.2",
        *QUICK,
        *extra,
    ]


LAST_CHECKPOINT = "--trainer.callbacks+=resnest_pl.callbacks.LastCheckpoint"


def every_n_steps(n: int) -> list[str]:
    return [LAST_CHECKPOINT, "--trainer.callbacks.every_n_train_steps", str(n)]


def assert_same_training_state(resumed: dict, uninterrupted: dict) -> None:
    assert resumed["global_step"] == uninterrupted["global_step"]
    assert resumed["epoch"] == uninterrupted["epoch"]
    for weights in ("state_dict", "current_model_state"):  # the EMA, and the live weights
        for key, value in uninterrupted[weights].items():
            torch.testing.assert_close(resumed[weights][key], value, rtol=0, atol=0, msg=key)
    for mine, theirs in zip(
        resumed["optimizer_states"][0]["state"].values(),
        uninterrupted["optimizer_states"][0]["state"].values(),
        strict=True,
    ):
        torch.testing.assert_close(mine["momentum_buffer"], theirs["momentum_buffer"], rtol=0, atol=0)
    assert resumed["lr_schedulers"] == uninterrupted["lr_schedulers"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    """Shuffled, augmented, mixed, with dropout and an EMA: killed mid-epoch, resumed with the same command, the final
    weights (live and averaged) are the uninterrupted run's to the bit."""
    # Dropout before the classifier draws from torch's generator, whose state the checkpoint carries too.
    overrides = "{width_multiplier: 0.25, stem_width: 8, min_attn_channels: 8, final_drop: 0.3}"
    ema = ["--model.ema_decay", "0.9", "--model.model_overrides", overrides]
    full = run_cli_process(resume_fit_args(tmp_path / "full", *ema))
    assert full.returncode == 0, full.stderr[-3000:]

    killed_root = tmp_path / "killed"
    killed = run_cli_process(resume_fit_args(killed_root, *ema, *every_n_steps(5), *signal_at(33, "SIGKILL")))
    assert killed.returncode == -9, killed.stderr[-3000:]
    saved = load_checkpoint(killed_root / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 30  # the last save before the kill: mid-way through the second epoch
    assert 0 < saved["global_step"] - STEPS_PER_EPOCH < STEPS_PER_EPOCH

    resumed = run_cli_process(resume_fit_args(killed_root, *ema, *every_n_steps(5), "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming epoch 1 after its first 8 batches" in resumed.stderr + resumed.stdout
    assert "dataloader is not resumable" not in resumed.stderr  # Lightning's warning does not apply here
    final = load_checkpoint(killed_root / "checkpoints" / "last.ckpt")
    assert final["global_step"] == 2 * STEPS_PER_EPOCH
    assert_same_training_state(final, load_checkpoint(tmp_path / "full" / "checkpoints" / "last.ckpt"))


@pytest.mark.slow
def test_last_checkpoint_is_the_final_epoch_when_the_best_is_earlier(tmp_path: Path, capsys) -> None:
    """Lightning's save_last only rewrote last.ckpt with a new best; here accuracy peaks before the end."""
    root = tmp_path / "run"
    # A learning rate far too high for the last epochs: val/acc1 falls after its peak.
    args = resume_fit_args(root, "--model.optimizer.init_args.lr", "6.0", "--model.warmup_epochs", "0", epochs=3)
    code, err = run_cli([*args, "--trainer.limit_train_batches", "6"], capsys)
    assert code == 0, err
    checkpoints = root / "checkpoints"
    best = next(checkpoints.glob("epoch*.ckpt"))
    best_epoch = load_checkpoint(best)["epoch"]
    last = load_checkpoint(checkpoints / "last.ckpt")
    assert best_epoch < 2, "precondition: the best epoch must not be the final one"
    assert last["epoch"] == 2 and last["global_step"] == 3 * 6


def test_ckpt_path_last_with_nothing_saved_starts_from_scratch(tmp_path: Path, capsys, caplog) -> None:
    root = tmp_path / "run"
    args = resume_fit_args(root, "--ckpt_path", "last", epochs=1)
    with caplog.at_level(logging.INFO):
        code, err = run_cli([*args, "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"], capsys)
    assert code == 0, err
    assert f"--ckpt_path last: no checkpoint at {root / 'checkpoints' / 'last.ckpt'}" in caplog.text
    assert "starting from scratch" in caplog.text
    assert "save_last=True" not in caplog.text + err  # Lightning's hint, which does not apply here
    assert load_checkpoint(root / "checkpoints" / "last.ckpt")["global_step"] == 2


def test_evaluating_last_with_nothing_saved_is_one_line(tmp_path: Path, capsys) -> None:
    args = ["validate", "--config", str(CONFIGS / "quickstart.yaml"), "--trainer.default_root_dir", str(tmp_path)]
    code, err = run_cli([*args, *QUICK, "--ckpt_path", "last"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: --ckpt_path last: no checkpoint at") and "Traceback" not in err


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-step run (its checkpoints folder)."""
    root = tmp_path_factory.mktemp("trained") / "run"
    args = resume_fit_args(root, "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", epochs=1)
    result = run_cli_process(args)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "checkpoints"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "weights_only"])
@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_damaged_ckpt_path_is_one_line_and_touches_nothing(
    damage: str, subcommand: str, trained: Path, tmp_path: Path, capsys
) -> None:
    good = (trained / "last.ckpt").read_bytes()
    bad = tmp_path / f"{damage}.ckpt"
    if damage == "truncated":
        bad.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"not a checkpoint at all" * 100)
    else:  # a plain state dict: weights, not a training state
        torch.save(load_checkpoint(trained / "last.ckpt")["state_dict"], bad)
    before = {p.name: p.stat().st_mtime_ns for p in trained.iterdir()}
    args = [subcommand, "--config", str(CONFIGS / "quickstart.yaml"), "--trainer.default_root_dir", str(trained.parent)]
    code, err = run_cli([*args, *QUICK, "--ckpt_path", str(bad)], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(f"error: {bad}")
    assert "Traceback" not in err and "weights_only=False" not in err
    assert {p.name: p.stat().st_mtime_ns for p in trained.iterdir()} == before


def test_check_checkpoint_file_accepts_a_real_checkpoint(trained: Path) -> None:
    check_checkpoint_file(trained / "last.ckpt")  # raises on anything it cannot read
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_checkpoint_file(trained / "missing.ckpt")


def test_trains_without_a_logger_and_one_last_per_root(tmp_path: Path, capsys) -> None:
    """`--trainer.logger false`: the LR monitor, which needs a logger, stands aside instead of failing."""
    root = tmp_path / "run"
    args = resume_fit_args(root, "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1", epochs=1)
    code, err = run_cli(args, capsys)
    assert code == 0, err
    assert load_checkpoint(root / "checkpoints" / "last.ckpt")["global_step"] == 3
    # A second, fresh run in the same root overwrites last.ckpt (Lightning would add last-v1.ckpt).
    first = (root / "checkpoints" / "last.ckpt").read_bytes()
    code, err = run_cli([*args, "--seed_everything", "1"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (root / "checkpoints").glob("last*")) == ["last.ckpt"]
    assert (root / "checkpoints" / "last.ckpt").read_bytes() != first


def test_every_n_minutes_saves_during_the_epoch(tmp_path: Path, capsys) -> None:
    """A time interval shorter than a step saves after every step; the file then holds the newest one."""
    root = tmp_path / "run"
    interval = [LAST_CHECKPOINT, "--trainer.callbacks.every_n_minutes", "1e-6"]
    args = resume_fit_args(root, *interval, *signal_at(4, "SIGKILL"), epochs=1)
    result = run_cli_process(args)
    assert result.returncode == -9
    # Killed in step 4's callbacks before the checkpoint callbacks (Lightning runs those last): step 3 is newest.
    assert load_checkpoint(root / "checkpoints" / "last.ckpt")["global_step"] == 3


@pytest.mark.slow
def test_a_process_killed_while_writing_last_leaves_the_previous_one_whole(tmp_path: Path) -> None:
    root = tmp_path / "run"
    kill = ["--trainer.callbacks+=tests.interrupt.KillDuringSave", "--trainer.callbacks.step", "4"]
    result = run_cli_process(resume_fit_args(root, *every_n_steps(2), *kill, epochs=1))
    assert result.returncode == -9, result.stderr[-3000:]
    assert (root / "checkpoints" / "last.ckpt.partial").is_file()  # the half-written file
    assert load_checkpoint(root / "checkpoints" / "last.ckpt")["global_step"] == 2  # the previous save, whole
    # The next run resumes from it, not from the partial file.
    resumed = run_cli_process(
        resume_fit_args(root, "--trainer.limit_train_batches", "6", "--ckpt_path", "last", epochs=1)
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(root / "checkpoints" / "last.ckpt")["global_step"] == 6


def test_ctrl_c_saves_the_current_step(tmp_path: Path) -> None:
    root = tmp_path / "run"
    limit = ["--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "1"]
    stopped = run_cli_process(resume_fit_args(root, *limit, *signal_at(4, "SIGINT"), epochs=1))
    assert stopped.returncode != 0
    assert load_checkpoint(root / "checkpoints" / "last.ckpt")["global_step"] == 4


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_resume_finishes_the_run(tmp_path: Path) -> None:
    root = tmp_path / "run"
    limit = ["--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "1"]
    stopped = run_cli_process(resume_fit_args(root, *limit, *signal_at(8, "SIGTERM")))
    assert stopped.returncode == 128 + 15, stopped.stderr[-3000:]
    assert "stopped by SIGTERM; resume with the same command and --ckpt_path last" in stopped.stderr
    assert load_checkpoint(root / "checkpoints" / "last.ckpt")["global_step"] == 8
    resumed = run_cli_process(resume_fit_args(root, *limit, "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(root / "checkpoints" / "last.ckpt")["global_step"] == 12


@pytest.mark.slow
@pytest.mark.proof
def test_slurm_requeue_signal_saves_requeues_and_the_same_command_resumes(tmp_path: Path) -> None:
    """SLURM sends SIGUSR1 ahead of the time limit (``--signal=SIGUSR1@90``): Lightning's auto-requeue writes
    ``hpc_ckpt_<n>.ckpt`` and calls ``scontrol requeue <job>``, and last.ckpt gets the step the signal came in. The
    requeued job, the same command with ``--ckpt_path last``, resumes from the newest of last.ckpt and the
    ``hpc_ckpt`` files. Here the job is sent the signal twice and killed outright (SIGKILL: no save of its own) in
    the step of the second one, before last.ckpt is written: Lightning's hpc_ckpt_2 is then the newest."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls.txt"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    slurm = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "resnest",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }
    root = tmp_path / "run"
    limit = ["--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "1", "--ckpt_path", "last"]
    signals = [*signal_at(3, "SIGUSR1"), *signal_at(5, "SIGUSR1"), *signal_at(5, "SIGKILL")]
    first = run_cli_process(resume_fit_args(root, *limit, *signals, epochs=1), env=slurm)
    assert first.returncode == -9, first.stderr[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"] * 2
    assert load_checkpoint(root / "checkpoints" / "last.ckpt")["global_step"] == 3  # the step of the first signal
    assert [load_checkpoint(root / f"hpc_ckpt_{n}.ckpt")["global_step"] for n in (1, 2)] == [3, 5]

    second = run_cli_process(resume_fit_args(root, *limit, epochs=1), env=slurm)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"--ckpt_path last: resuming from {root / 'hpc_ckpt_2.ckpt'}" in second.stderr
    assert "resuming epoch 0 after its first 5 batches" in second.stderr + second.stdout
    assert load_checkpoint(root / "checkpoints" / "last.ckpt")["global_step"] == 6


def test_the_slurm_job_template_requeues_and_resumes() -> None:
    script = ROOT / "configs" / "slurm" / "imagenet.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "#SBATCH --signal=SIGUSR1@90\n#SBATCH --requeue\n" in text
    # SLURM does not create the --output folder (the job would fail before it starts): a path in the submit folder.
    (output,) = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("#SBATCH --output=")]
    assert "/" not in output
    srun = text[text.index("srun ") :]
    assert "--config configs/trainer/multinode.yaml" in srun and srun.rstrip().endswith("--ckpt_path last")


@pytest.mark.slow
def test_torchrun_restarts_a_failed_worker_which_resumes_from_last(tmp_path: Path) -> None:
    """``torchrun --max-restarts 1`` reruns the same command line after a worker fails: the exception has
    refreshed last.ckpt and ``--ckpt_path last`` continues from it."""
    root = tmp_path / "run"
    fail = ["--trainer.callbacks+=tests.interrupt.FailOnFirstAttempt", "--trainer.callbacks.step", "4"]
    args = resume_fit_args(root, "--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "1", *fail)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    result = subprocess.run(
        [*torchrun, "--max-restarts", "1", "-m", "resnest_pl.cli", *args, "--ckpt_path", "last"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "worker failure injected after step 4" in result.stderr
    assert "--ckpt_path last: resuming from" in result.stderr
    assert load_checkpoint(root / "checkpoints" / "last.ckpt")["global_step"] == 12
