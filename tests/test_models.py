"""The model layer: Keras-exact VGG freezing, timm layer groups, weights, save/load.

Everything runs on the CPU without network: models are built with pretrained=False, from small
weight files made here, or from a fake Hugging Face cache; images are 32-64 px.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import tlbench
from tlbench.errors import ModelError, UsageError, WeightsError
from tlbench.models import (
    LayerEntry,
    TransferModel,
    backbone_layers,
    build_model,
    list_backbones,
    load_model,
    parse_freeze,
    save_model,
)

KERAS_VGG19 = [
    "input",
    *("block1_conv1", "block1_conv2", "block1_pool"),
    *("block2_conv1", "block2_conv2", "block2_pool"),
    *(f"block3_conv{i}" for i in range(1, 5)),
    "block3_pool",
    *(f"block4_conv{i}" for i in range(1, 5)),
    "block4_pool",
    *(f"block5_conv{i}" for i in range(1, 5)),
    "block5_pool",
]
VGG19_PARAMS = 20_024_384  # Keras VGG19(include_top=False)
VGG19_FREEZE_11 = 2_325_568  # Keras model.layers[:11]: the 8 convs of blocks 1-3


def _frozen(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if not p.requires_grad)


def _saved_activations(
    model: TransferModel, x: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> list[torch.Size]:
    """Shapes of what autograd saves for backward in `run(x)` (default: the model), parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    shapes: list[torch.Size] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            shapes.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        (run or model)(x)
    return shapes


def _nbytes(shapes: list[torch.Size]) -> int:
    return sum(s.numel() * 4 for s in shapes)  # float32


# -- VGG: Keras Applications semantics ------------------------------------------------------------


def test_vgg19_layer_list_matches_keras() -> None:
    layers = backbone_layers("vgg19")
    assert [e.name for e in layers] == KERAS_VGG19
    assert [e.index for e in layers] == list(range(22))
    assert sum(e.params for e in layers) == VGG19_PARAMS
    assert layers[10].modules == ("features.16", "features.17")  # conv + its ReLU
    assert layers[11].modules == ("features.18",)  # block3_pool = timm features[18]
    assert sum(e.params for e in layers[:11]) == VGG19_FREEZE_11


def test_vgg19_freeze_11_is_keras_layers_11() -> None:
    model = build_model("vgg19", 100, freeze="11", pretrained=False, image_size=32)
    counts = model.param_counts()
    assert counts["backbone"] == VGG19_PARAMS
    assert counts["frozen"] == VGG19_FREEZE_11
    assert counts["head"] == 512 * 512 + 512 + 512 * 100 + 100
    assert model.freeze_index == 11
    assert (model.layers[10].name, model.layers[10].frozen) == ("block3_conv4", True)
    assert (model.layers[11].name, model.layers[11].frozen) == ("block3_pool", False)
    # Equivalent to timm features[:18]: everything up to block3_conv4's ReLU, not block3_pool.
    assert isinstance(model.frozen, nn.Sequential) and len(model.frozen) == 18
    assert _frozen(model.frozen) == VGG19_FREEZE_11
    features = model.backbone.features
    assert not features[16].weight.requires_grad and features[19].weight.requires_grad
    assert not hasattr(model.backbone, "pre_logits")  # no fc6/fc7


def test_vgg_bn_entries_hold_conv_bn_relu() -> None:
    layers = backbone_layers("vgg19_bn")
    assert [e.name for e in layers] == KERAS_VGG19
    assert layers[1].type == "Conv2d+BatchNorm2d+ReLU"
    # + BatchNorm weight and bias of the 8 convs: 2 * (64 + 64 + 128 + 128 + 4 * 256)
    assert sum(e.params for e in layers[:11]) == VGG19_FREEZE_11 + 2 * 1408


def test_vgg19_flatten_head_at_224() -> None:
    model = build_model("vgg19", 100, pool="flatten", freeze="11", pretrained=False, image_size=224)
    assert model.feature_dim == 7 * 7 * 512 == 25_088
    assert model.head.fc1.weight.numel() + model.head.fc1.bias.numel() == 25_088 * 512 + 512 == 12_845_568
    model.eval()
    with torch.no_grad():  # the analytic feature_dim fits the real feature map
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 100)


def test_vgg_prefix_keeps_no_activations() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    frozen = build_model("vgg19", 10, freeze="11", pretrained=False, image_size=32)
    full = build_model("vgg19", 10, freeze="none", pretrained=False, image_size=32)
    seen: dict[str, torch.Tensor] = {}
    frozen.backbone.features[17].register_forward_hook(lambda m, i, o: seen.setdefault("prefix", o))
    frozen.backbone.features[19].register_forward_hook(lambda m, i, o: seen.setdefault("block4", o))
    with_freeze, without = _saved_activations(frozen, x), _saved_activations(full, x)
    assert seen["prefix"].grad_fn is None and not seen["prefix"].requires_grad
    assert seen["block4"].requires_grad
    # At 32 px, blocks 1-3 work at 32, 16 and 8 px; block4_conv1 takes the 4 px pooled map.
    assert max(s[-1] for s in with_freeze if len(s) == 4) == 4
    assert max(s[-1] for s in without if len(s) == 4) == 32
    assert _nbytes(with_freeze) < _nbytes(without) / 2
    # Exactly what the trainable suffix alone saves when fed the prefix's output as a constant.
    suffix = _saved_activations(
        frozen, seen["prefix"], lambda t: frozen.head(frozen.trainable(t).mean((2, 3)))
    )
    assert with_freeze == suffix


# -- other families: timm's fine groups -----------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_layers() -> list[LayerEntry]:
    return backbone_layers("resnet18")


def test_resnet_layer_list(resnet_layers: list[LayerEntry]) -> None:
    names = [e.name for e in resnet_layers]
    assert names == ["input", "stem", *(f"layer{s}.{b}" for s in range(1, 5) for b in range(2))]
    assert resnet_layers[1].modules == ("conv1", "bn1")
    assert sum(e.params for e in resnet_layers) == 11_176_512


@pytest.mark.parametrize("spec", ["0", "4", "10", "none", "all", "50%", "0%", "100%", "12.5 %"])
def test_resnet_freeze_counts(spec: str, resnet_layers: list[LayerEntry]) -> None:
    model = build_model("resnet18", 5, freeze=spec, pretrained=False, image_size=32)
    counts = model.param_counts()
    total = counts["backbone"]
    n = model.freeze_index
    prefix = [e.params for e in resnet_layers]
    assert counts["frozen"] == sum(prefix[:n])
    assert counts["trainable"] == counts["total"] - counts["frozen"]
    assert [e.frozen for e in model.layers] == [i < n for i in range(len(resnet_layers))]
    if spec == "none":
        assert n == 0 and model.frozen is None
    if spec == "all":
        assert n == len(resnet_layers) and counts["trainable"] == counts["head"]
        assert model.frozen is model.backbone
    if spec.endswith("%"):
        share = float(spec.rstrip("% "))
        assert 100 * sum(prefix[:n]) >= share * total  # holds the share ...
        assert n == 0 or 100 * sum(prefix[: n - 1]) < share * total  # ... and is the shortest
    if spec == "50%":
        assert n == 9  # up to layer3.1: 25 %; layer4.0 takes the prefix to 58 %


def test_frozen_batchnorm_and_grads(resnet_layers: list[LayerEntry]) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 5, freeze="4", pretrained=False, image_size=32).train()
    frozen_bn, live_bn = model.backbone.layer1[1].bn2, model.backbone.layer2[0].bn1
    before = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" in k}
    assert not frozen_bn.training and not model.backbone.bn1.training and live_bn.training
    assert not model.backbone.maxpool.training  # parameter-free modules of the prefix too

    loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).sum() + model.l2_penalty()
    loss.backward()

    after = model.backbone.state_dict()
    for key, value in before.items():
        frozen_key = key.startswith(("bn1.", "layer1."))
        assert torch.equal(after[key], value) == frozen_key, key
    for name, param in model.named_parameters():
        assert (param.grad is None) == (not param.requires_grad), name
    assert _frozen(model) == sum(e.params for e in resnet_layers[:4])
    model.eval().train()  # train() after eval() still keeps the frozen part in eval mode
    assert not frozen_bn.training and live_bn.training


def test_resnet_prefix_keeps_no_activations() -> None:
    x = torch.randn(2, 3, 32, 32)
    frozen = build_model("resnet18", 5, freeze="6", pretrained=False, image_size=32).train()
    full = build_model("resnet18", 5, freeze="none", pretrained=False, image_size=32).train()
    seen: list[torch.Tensor] = []
    frozen.backbone.layer2[1].register_forward_hook(lambda m, i, o: seen.append(o))
    saved = _saved_activations(frozen, x)
    assert seen[0].grad_fn is None  # the prefix (stem .. layer2.1) built no graph
    assert _nbytes(saved) < _nbytes(_saved_activations(full, x)) / 2
    # Exactly what layer3 onwards saves when fed the prefix's output as a constant.
    net = frozen.backbone
    suffix = _saved_activations(
        frozen, seen[0], lambda t: frozen.head(net.forward_head(net.layer4(net.layer3(t)), pre_logits=True))
    )
    assert saved == suffix


def test_vit_stem_freeze() -> None:
    model = build_model("test_vit", 3, freeze="2", pretrained=False, image_size=64)
    assert model.layers[1].name == "stem" and "pos_embed" in model.layers[1].modules
    assert not model.backbone.pos_embed.requires_grad and not model.backbone.cls_token.requires_grad
    assert model.backbone.blocks[0].attn.qkv.weight.requires_grad
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


# -- freeze spec errors ---------------------------------------------------------------------------


def test_freeze_out_of_range() -> None:
    layers = backbone_layers("vgg19")
    assert parse_freeze("22", layers) == 22 and parse_freeze("all", layers) == 22
    with pytest.raises(ModelError) as err:
        parse_freeze("23", layers, backbone="vgg19")
    assert err.value.exit_code == 5
    assert "0-22" in str(err.value) and "tlbench layers vgg19" in str(err.value)
    with pytest.raises(ModelError):
        build_model("resnet18", 5, freeze="11", pretrained=False, image_size=32)


@pytest.mark.parametrize("spec", ["abc", "-1", "12.5", "150%", "%", "1e3", ""])
def test_freeze_garbage(spec: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_freeze(spec, backbone_layers("resnet18"))
    assert err.value.exit_code == 2
    assert "%" in str(err.value)  # names the accepted forms


# -- head -----------------------------------------------------------------------------------------


def test_keras_l2_on_dense_kernel_only() -> None:
    model = build_model("test_resnet", 4, pretrained=False, image_size=32)
    assert model.l2 == 1e-4
    fc1 = model.head.fc1
    expected = 1e-4 * (fc1.weight**2).sum()
    torch.testing.assert_close(model.l2_penalty(), expected, rtol=1e-6, atol=0)
    with torch.no_grad():
        fc1.bias.add_(5.0)
        model.head.fc2.weight.add_(5.0)
        next(model.backbone.parameters()).add_(5.0)
    torch.testing.assert_close(model.l2_penalty(), expected, rtol=1e-6, atol=0)
    model.l2_penalty().backward()
    assert [n for n, p in model.named_parameters() if p.grad is not None] == ["head.fc1.weight"]
    assert [n for n, _ in model.head.named_children()] == ["fc1", "act", "drop", "fc2"]
    assert model.head.drop.p == 0.3 and model.head.fc1.out_features == 512


# -- weights --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_resnet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return timm.create_model("test_resnet").state_dict()  # with its 1000-class `fc`


def _assert_backbone_equals(model: TransferModel, state: dict[str, torch.Tensor]) -> None:
    own = model.backbone.state_dict()
    assert own.keys() == {k for k in state if not k.startswith("fc.")}
    assert all(torch.equal(own[k], state[k]) for k in own)


def test_weights_from_local_files(tmp_path: Path, test_resnet_state: dict[str, torch.Tensor]) -> None:
    assert "fc.weight" in test_resnet_state
    save_file(test_resnet_state, str(tmp_path / "w.safetensors"))
    torch.save({"epoch": 3, "state_dict": test_resnet_state}, tmp_path / "w.pth")
    (tmp_path / "dir").mkdir()
    save_file(test_resnet_state, str(tmp_path / "dir" / "model.safetensors"))
    for spec in ("w.safetensors", "w.pth", "local-dir:dir"):
        path = str(tmp_path / spec) if ":" not in spec else f"local-dir:{tmp_path / 'dir'}"
        model = build_model("test_resnet", 7, weights=path, image_size=32)
        _assert_backbone_equals(model, test_resnet_state)
        assert model.head.fc2.out_features == 7
        assert model.weights_source.startswith("file: ")


def test_weights_wrong_architecture_or_missing(tmp_path: Path) -> None:
    save_file(timm.create_model("test_efficientnet").state_dict(), str(tmp_path / "eff.safetensors"))
    with pytest.raises(WeightsError) as err:
        build_model("test_resnet", 7, weights=str(tmp_path / "eff.safetensors"), image_size=32)
    assert err.value.exit_code == 3 and "does not match test_resnet" in str(err.value)
    with pytest.raises(WeightsError, match="does not exist"):
        build_model("test_resnet", 7, weights=str(tmp_path / "nope.pth"), image_size=32)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        build_model("test_resnet", 7, weights=str(tmp_path / "junk.pth"), image_size=32)


def test_vgg_weights_drop_fc6_fc7_and_classifier(tmp_path: Path) -> None:
    donor = build_model("vgg11", 2, pretrained=False, image_size=32).backbone.state_dict()
    state = {
        **donor,
        "pre_logits.fc1.weight": torch.zeros(8, 512, 7, 7),  # timm's fc6 (shrunk: only the name matters)
        "head.fc.weight": torch.zeros(1000, 8),
        "classifier.6.weight": torch.zeros(1000, 8),  # torchvision's top
    }
    save_file(state, str(tmp_path / "vgg11.safetensors"))
    model = build_model("vgg11", 3, weights=str(tmp_path / "vgg11.safetensors"), image_size=32)
    assert all(torch.equal(v, donor[k]) for k, v in model.backbone.state_dict().items())


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache in offline mode.

    huggingface_hub reads HF_HOME and HF_HUB_OFFLINE once, at import; an earlier test may have
    imported it under another HF_HOME, so its constants are patched as well as the environment.
    """
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf" / "hub"


def test_offline_without_cache_is_a_weights_error(hf_cache: Path) -> None:
    with pytest.raises(WeightsError) as err:
        build_model("test_resnet", 3, pretrained=True, image_size=32)
    message = str(err.value)
    assert err.value.exit_code == 3
    assert "test_resnet" in message and "--weights" in message and "--no-pretrained" in message
    assert "\n" not in message


def test_no_pretrained_source_is_a_weights_error(hf_cache: Path) -> None:
    with pytest.raises(WeightsError, match="no pretrained weights exist for botnet50ts_256") as err:
        build_model("botnet50ts_256", 3, pretrained=True, image_size=256)
    assert "--no-pretrained" in str(err.value)


def test_unreachable_hub_fails_fast(tmp_path: Path, test_resnet_state: dict[str, torch.Tensor]) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE and HF_ENDPOINT at import, so this runs in a fresh
    # process: online mode, a hub on a closed loopback port (nothing leaves the machine), and a
    # cache that holds test_resnet but not resnet18. Without the probe, huggingface_hub retries
    # resnet18 for ~50 s before giving up; test_resnet, cached, needs no hub at all.
    _fake_hf_cache(tmp_path / "hf" / "hub", "test_resnet", test_resnet_state)
    code = (
        "import json, time\n"
        "from tlbench.errors import WeightsError\n"
        "from tlbench.models import build_model\n"
        "build_model('test_resnet', 4, pretrained=True, image_size=32)\n"
        "start = time.perf_counter()\n"
        "try:\n"
        "    build_model('resnet18', 4, pretrained=True, image_size=32)\n"
        "except WeightsError as exc:\n"
        "    print(json.dumps([time.perf_counter() - start, exc.exit_code, str(exc)]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    seconds, exit_code, message = json.loads(done.stdout.strip().splitlines()[-1])
    assert exit_code == 3 and seconds < 15
    assert "not in the Hugging Face cache" in message and "http://127.0.0.1:9 is unreachable" in message
    assert "--weights" in message and "--no-pretrained" in message and "\n" not in message
    assert "Retrying" not in done.stderr


def _fake_hf_cache(cache: Path, backbone: str, state: dict[str, torch.Tensor]) -> str:
    """Put `state` in a Hugging Face cache as `backbone`'s weights; returns the repo id.

    The minimal layout huggingface_hub resolves: refs/main names a commit, the snapshot folder of
    that commit holds the file (a plain file works; blobs/ is not needed).
    """
    repo_id = timm.models.get_pretrained_cfg(backbone).hf_hub_id
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    return repo_id


def test_pretrained_from_offline_hf_cache(hf_cache: Path, test_resnet_state: dict[str, torch.Tensor]) -> None:
    repo_id = _fake_hf_cache(hf_cache, "test_resnet", test_resnet_state)
    assert repo_id == "timm/test_resnet.r160_in1k"

    model = build_model("test_resnet", 3, pretrained=True, image_size=32)
    _assert_backbone_equals(model, test_resnet_state)
    assert model.weights_source == f"timm hub: {repo_id}"
    assert model.data_config["mean"] == (0.5, 0.5, 0.5)


# -- save / load ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backbone", "freeze", "pool", "size"),
    [("vgg11_bn", "5", "flatten", 64), ("resnet18", "50%", "avg", 32)],
)
def test_save_load_round_trip(tmp_path: Path, backbone: str, freeze: str, pool: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(backbone, 6, freeze=freeze, pool=pool, pretrained=False, image_size=size)
    x = torch.randn(3, 3, size, size)
    model.train()(x)  # move the trainable BatchNorm statistics off their initial values
    model.l2 = 5e-4
    save_model(model, tmp_path / "m", extra={"classes": list("abcdef")})
    loaded = load_model(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert loaded.extra == {"classes": list("abcdef")}
    assert (loaded.freeze_spec, loaded.freeze_index) == (freeze, model.freeze_index)
    assert loaded.param_counts() == model.param_counts()
    assert loaded.data_config == model.data_config
    assert loaded.l2 == 5e-4
    assert tlbench.load_model is load_model


def test_load_model_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="holds no saved model"):
        load_model(tmp_path)


# -- names ----------------------------------------------------------------------------------------


def test_unknown_backbone_suggests_close_matches() -> None:
    with pytest.raises(ModelError) as err:
        build_model("resnet5", 3, pretrained=False)
    assert err.value.exit_code == 5
    assert "resnet50" in str(err.value) and "tlbench backbones" in str(err.value)
    with pytest.raises(ModelError, match="a1_in1k"):
        backbone_layers("resnet18.nope")


def test_list_backbones() -> None:
    found = dict(list_backbones("vgg1"))
    assert found["vgg19"] is True and "vgg19_bn" in found and "resnet18" not in found
    assert dict(list_backbones("test_res*")) == {"test_resnet": True}


def test_import_tlbench_stays_cheap() -> None:
    code = "import sys, tlbench; assert 'torch' not in sys.modules; assert callable(tlbench.__getattr__)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_frozen_vgg_bn_keeps_its_running_statistics() -> None:
    from tlbench.models import build_model

    model = build_model("vgg11_bn", 5, freeze="3", pretrained=False, image_size=32)
    bn = model.backbone.features[1]
    before = bn.running_mean.clone()
    model.train()
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    assert not bn.training and torch.equal(bn.running_mean, before)
    trainable_bn = model.backbone.features[5]  # block2_conv1's BatchNorm: not frozen, updates
    assert trainable_bn.training
