"""``pretrained=``: local files, URLs through the torch.hub cache, checkpoints, new heads, bad files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from resnest_pl.models import IncompatibleCheckpointError, create_model, get_variant, same_architecture

from ..helpers import TINY, tiny_model


def _same_trunk(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in sa.items() if not k.startswith("fc."))


def test_local_state_dict_loads_exactly(tmp_path: Path) -> None:
    source = tiny_model().eval()
    torch.save(source.state_dict(), tmp_path / "w.pth")
    loaded = create_model("resnest14d", num_classes=10, pretrained=tmp_path / "w.pth", **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_other_class_count_keeps_trunk_and_reinitialises_head(tmp_path: Path) -> None:
    source = tiny_model(num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "imagenet.pth")
    loaded = tiny_model(num_classes=7, pretrained=str(tmp_path / "imagenet.pth"))
    assert loaded.fc.out_features == 7
    assert _same_trunk(loaded, source)


def test_loaded_weights_are_described_in_one_line(tmp_path: Path) -> None:
    torch.save(tiny_model(num_classes=1000).state_dict(), tmp_path / "imagenet.pth")
    loaded = tiny_model(num_classes=7, pretrained=str(tmp_path / "imagenet.pth"))
    assert loaded.loaded_from == (
        f"loading weights: {tmp_path / 'imagenet.pth'} (a state dict without a run record); "
        "classifier 1000 → 7 classes, re-initialised"
    )
    assert tiny_model().loaded_from is None


def test_lightning_and_ddp_checkpoints_are_unwrapped(tmp_path: Path) -> None:
    source = tiny_model()
    wrapped = {f"model.module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": wrapped, "epoch": 3}, tmp_path / "last.ckpt")
    assert _same_trunk(tiny_model(pretrained=tmp_path / "last.ckpt"), source)


def test_url_goes_through_the_hub_cache_with_its_hash_checked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    source = tiny_model()
    raw = tmp_path / "raw.pth"
    torch.save(source.state_dict(), raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    good = tmp_path / f"tiny-{digest[:8]}.pth"
    good.write_bytes(raw.read_bytes())
    assert _same_trunk(tiny_model(pretrained=good.as_uri()), source)
    assert (tmp_path / "hub" / "hub" / "checkpoints" / good.name).is_file()

    bad = tmp_path / "tiny-00000000.pth"
    bad.write_bytes(raw.read_bytes())
    with pytest.raises(OSError, match="sha256"):
        tiny_model(pretrained=bad.as_uri())


def test_pretrained_true_uses_the_official_url(monkeypatch) -> None:
    seen = {}
    state = create_model("resnest50").state_dict()

    def fake_download(url: str, **kwargs: object) -> dict:
        seen.update(url=url, **kwargs)
        return state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    create_model("resnest50", pretrained=True)
    assert seen["url"] == get_variant("resnest50").weights_url
    assert seen["url"].endswith("resnest50-528c19ca.pth") and seen["check_hash"] is True


def test_unreachable_url_says_how_to_get_around_it(monkeypatch) -> None:
    def offline(url: str, **kwargs: object) -> dict:
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(OSError, match="download the file by hand and pass its local path"):
        create_model("resnest50", pretrained=True)


def test_incompatible_architecture_is_named(tmp_path: Path) -> None:
    torch.save(tiny_model(radix=4).state_dict(), tmp_path / "r4.pth")
    with pytest.raises(IncompatibleCheckpointError, match=r"wrong shape.*same variant and overrides"):
        tiny_model(pretrained=tmp_path / "r4.pth")
    torch.save(tiny_model(name="resnest26d").state_dict(), tmp_path / "26.pth")
    with pytest.raises(IncompatibleCheckpointError, match="unexpected"):
        tiny_model(pretrained=tmp_path / "26.pth")


def test_missing_and_corrupt_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tiny_model(pretrained=tmp_path / "nope.pth")
    torch.save({"epoch": 1}, tmp_path / "empty.pth")
    with pytest.raises(IncompatibleCheckpointError, match="holds no tensors"):
        tiny_model(pretrained=tmp_path / "empty.pth")


def _bad_files(folder: Path) -> dict[str, Path]:
    """Files that are no checkpoint: garbage, a truncated torch.save zip, a truncated safetensors file."""
    from safetensors.torch import save_file

    state = tiny_model().state_dict()
    torch.save(state, folder / "full.pth")
    save_file(state, folder / "full.safetensors")
    files = {"garbage": folder / "garbage.pth"}
    files["garbage"].write_bytes(b"not a checkpoint at all")
    for name in ("full.pth", "full.safetensors"):
        truncated = folder / f"truncated_{name}"
        truncated.write_bytes((folder / name).read_bytes()[:5000])
        files[name] = truncated
    return files


@pytest.mark.parametrize("kind", ["garbage", "full.pth", "full.safetensors"])
def test_corrupt_files_get_a_clean_message(kind: str, tmp_path: Path) -> None:
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(IncompatibleCheckpointError) as error:
        tiny_model(pretrained=path)
    message = str(error.value)
    assert message == (
        f"{path} is not a PyTorch or safetensors checkpoint (truncated or corrupt?); re-export it or pass another file"
    )
    assert "weights_only" not in message


def test_pickled_objects_are_refused_without_advising_unsafe_loading(tmp_path: Path) -> None:
    import functools

    torch.save(
        {"state_dict": tiny_model().state_dict(), "optimizer": functools.partial(torch.optim.SGD)}, tmp_path / "p.ckpt"
    )
    with pytest.raises(IncompatibleCheckpointError, match=r"stores Python objects \(functools.partial\)") as error:
        tiny_model(pretrained=tmp_path / "p.ckpt")
    assert "weights_only" not in str(error.value) and "\n" not in str(error.value)


def test_safetensors_file_and_exported_folder_load_exactly(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = tiny_model().eval()
    folder = tmp_path / "export"
    folder.mkdir()
    save_file(source.state_dict(), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_name": "resnest14d", "model_overrides": TINY}))
    x = torch.randn(2, 3, 32, 32)
    for pretrained in (folder / "model.safetensors", folder, str(folder)):
        loaded = create_model("resnest14d", num_classes=10, pretrained=pretrained, **TINY).eval()
        with torch.no_grad():
            assert torch.equal(loaded(x), source(x))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"folder without model\.safetensors or model\.pth"):
        tiny_model(pretrained=tmp_path / "empty")


def test_exported_folder_of_another_variant_is_named(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tiny_model().state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_name": "resnest14d", "model_overrides": TINY}))
    with pytest.raises(IncompatibleCheckpointError) as error:
        create_model("resnest26d", num_classes=10, pretrained=tmp_path, **{**TINY, "width_multiplier": 0.5})
    assert str(error.value).startswith(
        f"{tmp_path} holds resnest14d {{width_multiplier: 0.25, stem_width: 8, min_attn_channels: 8}} weights but "
        "the model is resnest26d {width_multiplier: 0.5, stem_width: 8, min_attn_channels: 8}"
    )
    # Regularisation does not change the weights, and timm's names are the same architectures.
    assert same_architecture("resnest14d", {**TINY, "dropblock_prob": 0.1}, "resnest14d", TINY)
    assert same_architecture("resnest50d", {}, "resnest50", {"zero_gamma": False})
    assert not same_architecture("resnest50", {}, "resnest50", {"radix": 4})


def test_training_checkpoint_of_another_variant_is_named(tmp_path: Path) -> None:
    state = {f"model.{k}": v for k, v in tiny_model().state_dict().items()}
    hparams = {"model_name": "resnest14d", "model_overrides": {"width_multiplier": 0.25}}
    torch.save({"state_dict": state, "hyper_parameters": hparams}, tmp_path / "last.ckpt")
    with pytest.raises(IncompatibleCheckpointError) as error:
        tiny_model(name="resnest26d", pretrained=tmp_path / "last.ckpt")
    assert str(error.value).startswith(
        f"{tmp_path / 'last.ckpt'} holds resnest14d {{width_multiplier: 0.25}} weights but the model is resnest26d "
        "{width_multiplier: 0.25, stem_width: 8, min_attn_channels: 8}; create the model with the checkpoint's settings"
    )
