"""Weights interchangeable with the reference ``resnest`` package and timm, outputs equal.

Every shared variant is checked in float64, eval mode, with randomised BatchNorm
statistics so that no layer can hide behind an identity initialisation.
"""

from __future__ import annotations

import pytest
import timm
import torch
from resnest import torch as reference

from resnest_pl.models import create_model

from ..helpers import assert_same_gradients, assert_same_outputs, randomise_batchnorm

REFERENCE_VARIANTS = [
    "resnest50",
    "resnest101",
    pytest.param("resnest200", marks=pytest.mark.slow),
    pytest.param("resnest269", marks=pytest.mark.slow),
    "resnest50_fast_1s1x64d",
    "resnest50_fast_2s1x64d",
    "resnest50_fast_4s1x64d",
    "resnest50_fast_1s2x40d",
    "resnest50_fast_2s2x40d",
    "resnest50_fast_4s2x40d",
    "resnest50_fast_1s4x24d",
]
TIMM_VARIANTS = [
    ("resnest14d", "resnest14d"),
    ("resnest26d", "resnest26d"),
    ("resnest50d", "resnest50"),
    ("resnest50d_4s2x40d", "resnest50_fast_4s2x40d"),
    ("resnest50d_1s4x24d", "resnest50_fast_1s4x24d"),
]


@pytest.mark.parametrize("name", REFERENCE_VARIANTS)
def test_reference_weights_load_and_match(name: str) -> None:
    theirs = randomise_batchnorm(getattr(reference, name)(pretrained=False).double())
    ours = create_model(name).double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert_same_outputs(ours, theirs)


@pytest.mark.parametrize(("timm_name", "name"), TIMM_VARIANTS)
def test_timm_weights_load_and_match(timm_name: str, name: str) -> None:
    theirs = randomise_batchnorm(timm.create_model(timm_name, pretrained=False).double())
    ours = create_model(timm_name).double()
    assert create_model(timm_name).cfg == create_model(name).cfg
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert_same_outputs(ours, theirs)


def test_our_weights_load_into_the_reference() -> None:
    ours = randomise_batchnorm(create_model("resnest50_fast_2s2x40d").double())
    theirs = reference.resnest50_fast_2s2x40d(pretrained=False).double()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    assert_same_outputs(ours, theirs)


def test_train_mode_gradients_match_reference() -> None:
    theirs = randomise_batchnorm(reference.resnest50(pretrained=False).double()).train()
    ours = create_model("resnest50").double().train()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert_same_gradients(ours, theirs, size=64, targets=[3, 7], rtol=1e-8)
    for name, buffer in ours.named_buffers():  # batch statistics were updated identically
        torch.testing.assert_close(buffer, theirs.get_buffer(name), rtol=1e-10, atol=1e-12, msg=name)
