"""Where a backbone's weights come from: timm's pretrained resolution, or a local file.

Three rules hold throughout. A run never falls back to random initialisation silently: timm only
logs a warning when a model has no weight source, so the source is checked before timm is
called. Weights that must come from an unreachable hub fail at once: huggingface_hub would retry
for about 50 s first, so the hub is probed with a short timeout before it is asked. And every
failure to get weights is a `WeightsError` (exit code 3) that names the fixes.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import get_pretrained_cfg
from torch import Tensor, nn

from tlbench._util import first_line
from tlbench.errors import WeightsError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
LOCAL_DIR_PREFIX = "local-dir:"
# Names looked for, in this order, inside a folder given as `local-dir:FOLDER`.
_FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")
# Seconds the hub may take to answer the reachability probe (it answers in well under one).
HUB_PROBE_TIMEOUT = 3.0
# Keys of a VGG checkpoint that lie outside Keras' `include_top=False` base: timm's fc6/fc7
# (`pre_logits`) and classifier (`head`), and torchvision's `classifier`.
_VGG_TOP_PREFIXES = ("pre_logits", "head", "classifier")


def _exception_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the weights could not be had" when timm fetches them."""
    types: list[type[BaseException]] = [
        OSError,  # LocalEntryNotFoundError, HfHubHTTPError, URLError, missing/corrupt cache files
        ConnectionError,  # OfflineModeIsEnabled
        RuntimeError,  # torch.load / load_state_dict failures, hub errors
        ValueError,
        EOFError,
        pickle.UnpicklingError,
        SafetensorError,
    ]
    try:
        from huggingface_hub.errors import EntryNotFoundError

        types.append(EntryNotFoundError)
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        pass
    try:
        import httpx

        types.append(httpx.HTTPError)
    except ImportError:  # pragma: no cover - depends on the huggingface_hub version
        pass
    return tuple(types)


def _short_reason(exc: BaseException, limit: int = 160) -> str:
    """`first_line(exc)`, the whole of it (type name included) cut to `limit` with an ellipsis."""
    line = first_line(exc, limit)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def pretrained_source(backbone: str) -> str:
    """Describe where timm would load `backbone`'s pretrained weights from.

    Args:
        backbone: A timm model name, optionally with a pretrained tag (`vgg19.tv_in1k`).

    Returns:
        For example `timm hub: timm/vgg19.tv_in1k` or `url: https://...`.

    Raises:
        WeightsError: timm knows no source for these weights.
    """
    cfg = get_pretrained_cfg(backbone)
    if cfg is not None:
        if cfg.hf_hub_id:
            return f"timm hub: {cfg.hf_hub_id}"
        if cfg.url:
            return f"url: {cfg.url}"
        if cfg.file:
            return f"file: {cfg.file}"
    raise WeightsError(
        f"no pretrained weights exist for {backbone}",
        "train it from scratch with --no-pretrained, pass --weights PATH, "
        "or pick a backbone that `tlbench backbones` marks as pretrained",
    )


def cache_remedy(backbone: str) -> str:
    """The one-line fix for pretrained weights that cannot be had."""
    return (
        "warm the cache online "
        f"(python -c \"import timm; timm.create_model('{backbone}', pretrained=True)\"), "
        "pass --weights PATH, or --no-pretrained"
    )


def create_pretrained(backbone: str, **kwargs: Any) -> tuple[nn.Module, str]:
    """Create a timm model with its pretrained weights, through timm's normal resolution.

    The Hugging Face cache is used as timm uses it, and `HF_HUB_OFFLINE=1` is honoured.

    Args:
        backbone: timm model name, optionally with a pretrained tag.
        **kwargs: Passed to `timm.create_model` (e.g. `num_classes=0`).

    Returns:
        The model and a description of the weight source.

    Raises:
        WeightsError: No source exists, or the weights cannot be fetched or read.
    """
    source = pretrained_source(backbone)  # before timm: timm would only log a warning
    try:
        _check_hub_reachable(backbone)
        model = timm.create_model(backbone, pretrained=True, **kwargs)
    except _exception_types() as exc:
        raise WeightsError(
            f"cannot load the pretrained weights of {backbone} ({source}): {_why(exc)}",
            cache_remedy(backbone),
        ) from exc
    return model, source


def check_weights_reachable(backbone: str) -> str:
    """Before anything trains: `backbone`'s pretrained weights can be had (cached, another source, or
    the hub answers). Return their source.

    Raises:
        WeightsError: No source; not cached while offline (`HF_HUB_OFFLINE`); the hub unreachable.
    """
    from huggingface_hub import constants

    source = pretrained_source(backbone)
    cfg = get_pretrained_cfg(backbone)
    if cfg is None or not cfg.hf_hub_id or _in_hf_cache(cfg):
        return source
    if constants.is_offline_mode():
        raise WeightsError(
            f"the pretrained weights of {backbone} ({source}) are not cached, and the hub is off (offline)",
            cache_remedy(backbone),
        )
    try:
        _check_hub_reachable(backbone)
    except HubUnreachable as exc:
        raise WeightsError(
            f"cannot fetch the pretrained weights of {backbone}: {exc}", cache_remedy(backbone)
        ) from None
    return source


class HubUnreachable(ConnectionError):
    """The Hugging Face Hub did not answer the reachability probe."""


def _check_hub_reachable(backbone: str) -> None:
    """Probe the hub once when timm is about to download `backbone`'s weights from it.

    Only then: weights in the Hugging Face cache, offline mode and other sources skip the probe.

    Raises:
        HubUnreachable: No answer within `HUB_PROBE_TIMEOUT` seconds, or the connection failed.
    """
    from huggingface_hub import constants

    cfg = get_pretrained_cfg(backbone)
    if cfg is None or not cfg.hf_hub_id or constants.is_offline_mode() or _in_hf_cache(cfg):
        return
    reason = _probe(constants.ENDPOINT, HUB_PROBE_TIMEOUT)
    if reason is not None:
        raise HubUnreachable(f"the hub {constants.ENDPOINT} is unreachable ({reason})")


def _in_hf_cache(cfg: Any) -> bool:
    """A weight file timm may ask for is cached: huggingface_hub falls back to it without retrying."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = str(cfg.hf_hub_id).partition("@")
    names = {cfg.hf_hub_filename, *_FOLDER_FILES} - {None}
    return any(
        isinstance(try_to_load_from_cache(repo_id, name, revision=revision or None), str) for name in names
    )


def _probe(url: str, timeout: float) -> str | None:
    """HEAD `url` through huggingface_hub's own HTTP client (its proxies and certificates).

    Any answer, whatever its status, means reachable. The request runs in a daemon thread that is
    given up after `timeout` plus a second, since a hanging DNS lookup ignores the client's timeout.

    Returns:
        None when it answered; otherwise why not, in a few words.
    """
    from huggingface_hub import get_session

    outcome: list[str | None] = []

    def head() -> None:
        try:
            get_session().head(url, timeout=timeout)
            outcome.append(None)
        except Exception as exc:  # any failure to get an answer means unreachable, said how
            outcome.append(_short_reason(exc, 100))

    thread = threading.Thread(target=head, name="tlbench-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return outcome[0] if outcome else f"no answer in {timeout:g} s"


def _why(exc: BaseException) -> str:
    """Say in a few words why a fetch failed; huggingface_hub's own messages run to paragraphs."""
    try:
        from huggingface_hub import constants
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return _short_reason(exc)
    if isinstance(exc, HubUnreachable):
        state = str(exc)
    elif isinstance(exc, LocalEntryNotFoundError):
        offline = constants.is_offline_mode()
        state = "offline mode is on (HF_HUB_OFFLINE=1)" if offline else "the hub is unreachable"
    else:
        return _short_reason(exc)
    return f"not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {state}"


def resolve_weights_path(spec: str | Path) -> Path:
    """Turn a `--weights` value into the path of one weight file.

    Args:
        spec: A `.safetensors`, `.pth`, `.pt` or `.bin` file, or `local-dir:FOLDER` (a plain
            folder is accepted too) holding `model.safetensors`, `pytorch_model.bin` or one
            weight file.

    Returns:
        The weight file.

    Raises:
        WeightsError: The file or folder is missing, empty or of an unknown kind.
    """
    text = str(spec)
    is_folder = text.startswith(LOCAL_DIR_PREFIX)
    path = Path(text.removeprefix(LOCAL_DIR_PREFIX)).expanduser()
    if not path.exists():
        kind = "folder" if is_folder else "file"
        raise WeightsError(
            f"weights {kind} {path} does not exist",
            "check the path given to --weights, or use --no-pretrained",
        )
    if path.is_dir():
        return _weights_in_folder(path)
    if is_folder:
        raise WeightsError(
            f"{path} is a file, but local-dir: needs a folder",
            f"pass --weights {path} without the local-dir: prefix",
        )
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise WeightsError(
            f"{path} is not a weight file tlbench can read (suffix {path.suffix or 'missing'})",
            f"pass a {', '.join(WEIGHT_SUFFIXES)} file or local-dir:FOLDER",
        )
    return path


def _weights_in_folder(folder: Path) -> Path:
    for name in _FOLDER_FILES:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(p.name for p in candidates[:4]) or "none"
    raise WeightsError(
        f"cannot pick a weight file in {folder} (found: {found})",
        "name the file itself with --weights FOLDER/FILE",
    )


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a state dict from a `.safetensors` file or a (weights-only) torch pickle, on the CPU.

    A checkpoint dict that wraps the weights under `state_dict` or `model` is unwrapped, and a
    `module.` prefix left by DistributedDataParallel is removed.

    Raises:
        WeightsError: The file cannot be read or holds no state dict.
    """
    try:
        if path.suffix.lower() == ".safetensors":
            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as exc:
        raise WeightsError(
            f"cannot read weights from {path}: {_short_reason(exc)}",
            "pass a state dict saved with safetensors or torch.save, or use --no-pretrained",
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(
            f"{path} holds no state dict (a mapping of names to tensors)",
            "save the weights with torch.save(model.state_dict(), PATH) or safetensors",
        )
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def drop_top(
    state: Mapping[str, Tensor], classifier: str | Iterable[str] | None, *, vgg: bool
) -> dict[str, Tensor]:
    """Drop the classifier's keys, as timm does when it loads weights into `num_classes=0`.

    Args:
        state: A full model's state dict.
        classifier: The classifier module name(s) from the pretrained cfg (`fc`, `head.fc`, ...).
        vgg: Also drop VGG's fc6/fc7 (`pre_logits`) and torchvision's `classifier`: the Keras
            backbone is the convolutional base only.

    Returns:
        The state dict without those keys.
    """
    names = [classifier] if isinstance(classifier, str) else list(classifier or [])
    if vgg:
        names += list(_VGG_TOP_PREFIXES)
    return {k: v for k, v in state.items() if not any(k == n or k.startswith(n + ".") for n in names)}


def load_backbone_state(
    module: nn.Module, state: Mapping[str, Tensor], *, source: str, backbone: str
) -> None:
    """Load `state` strictly into `module`, or explain in one line why it does not fit.

    Raises:
        WeightsError: Keys are missing or unexpected, or shapes differ.
    """
    own = module.state_dict()
    # BatchNorm fills a missing `num_batches_tracked` itself (old torchvision checkpoints lack it).
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    problems = [
        f"{label} {_few(items)}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", mismatched))
        if items
    ]
    if problems:
        raise WeightsError(
            f"{source} does not match {backbone}: {'; '.join(problems)}",
            f"pass weights saved from a {backbone} model "
            f"(timm.create_model('{backbone}').state_dict()), or use --no-pretrained",
        )
    module.load_state_dict(state, strict=True)


def _few(items: list[str], limit: int = 3) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
