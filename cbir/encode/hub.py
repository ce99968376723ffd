"""Hub weights without the hub's patience: open_clip fetches pretrained weights through
huggingface_hub, whose HTTP layer retries an unreachable host for most of a minute before it
gives up. Weights already in the cache are loaded in offline mode (no network at all); others
are downloaded only after one short probe finds the hub reachable, so with no network a load
fails in seconds with the same one-line hint."""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from contextlib import contextmanager
from urllib.parse import urlsplit

from cbir.encode.spec import BUNDLED, ModelSpec
from cbir.errors import ModelLoadError

PROBE_SECONDS = 2.0  # a TCP connect to the hub (or its proxy) takes well under a second online
DEFAULT_ENDPOINT = "https://huggingface.co"


def uses_hub(spec: ModelSpec) -> bool:
    """Loading ``spec`` may download from the hub: a pretrained tag or an hf-hub: model."""
    return spec.arch.startswith("hf-hub:") or (
        spec.pretrained is not None and not spec.is_file and spec.pretrained != BUNDLED
    )


def cached(spec: ModelSpec) -> bool | None:
    """Whether the weights of a pretrained tag are in the hub cache; None when it cannot be told
    (hf-hub: models, whose config also comes from the hub, and tags without hub weights)."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    if spec.arch.startswith("hf-hub:") or not spec.pretrained:
        return None
    hub_path = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained).get("hf_hub", "")
    if not hub_path:
        return None
    repo, filename = os.path.split(hub_path)
    filename = filename or "open_clip_pytorch_model.bin"
    # open_clip looks for a .safetensors twin first (pretrained._get_safe_alternatives)
    twin = (
        "open_clip_model.safetensors"
        if filename == "open_clip_pytorch_model.bin"
        else (os.path.splitext(filename)[0] + ".safetensors")
    )
    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in (filename, twin))


def endpoint_address() -> tuple[str, int]:
    """(host, port) a download connects to first: the HTTPS proxy when one is set, else the hub."""
    url = os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    host = urlsplit(url).hostname or "huggingface.co"
    proxy = urllib.request.getproxies().get("https")
    if proxy and not urllib.request.proxy_bypass(host):
        url = proxy if "://" in proxy else f"http://{proxy}"
    parts = urlsplit(url)
    return parts.hostname or host, parts.port or (443 if parts.scheme == "https" else 80)


def reachable(timeout: float = PROBE_SECONDS) -> bool:
    """One TCP connect to the hub within ``timeout`` seconds, name lookup included (it runs in
    a thread, as a hanging resolver ignores socket timeouts)."""
    address = endpoint_address()
    result: list[bool] = []

    def probe():
        try:
            socket.create_connection(address, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="cbir-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result) and result[0]


def unreachable_hint(spec: ModelSpec) -> str:
    host, port = endpoint_address()
    return (
        f"cannot load {spec.name} (its weights are not downloaded yet and {host}:{port} cannot be "
        f"reached); weights come from the Hugging Face hub on first use, so check the network, or "
        f"pass a local file with --model {spec.arch}:path/to/weights.pt, or use the bundled --model cbir-tiny"
    )


@contextmanager
def hub_access(spec: ModelSpec):
    """Around a model load: offline mode (the cache alone) when the weights are cached or the
    hub cannot be reached; weights known to be missing with the hub unreachable are an error at
    once. Yields True when the hub was found unreachable (a failed load then says so)."""
    if not uses_hub(spec):
        yield False
        return
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:  # the user asked for it (HF_HUB_OFFLINE=1)
        yield False
        return
    in_cache = cached(spec)
    unreachable = not in_cache and not reachable()
    if not in_cache and not unreachable:
        yield False  # a download
        return
    if unreachable and in_cache is False:
        raise ModelLoadError(unreachable_hint(spec))
    constants.HF_HUB_OFFLINE = True
    try:
        yield unreachable
    finally:
        constants.HF_HUB_OFFLINE = False
