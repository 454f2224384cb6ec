"""Remote sources: ``hf://ORG/REPO[@REV][/PATH]`` and ``https://`` URLs, read without downloading tensor data.

Only JSON files (configs, shard indexes, adapter configs) and the headers of ``.safetensors`` files are fetched: for
each safetensors file one HTTP range request for its first 8 bytes (the header length) and one for the header, so a
100 GB checkpoint costs a few MB. Requests go through ``huggingface_hub``'s HTTP client (its proxies, retries and
offline switch; tokens from ``HF_TOKEN`` or ``huggingface-cli login``, sent to the Hub endpoint only); a response
that ignores the range is cut off after the bytes asked for.

What was fetched is laid out in a temporary *mirror* folder: JSON files as they are, each safetensors file as its
header followed by a sparse hole of the file's true size. The local readers then read the mirror, with all their
checks (a header that breaks the format, an index that disagrees with its shards, a shard path leading outside),
and the result is relabelled with the URL. The mirror never holds tensor data, so a remote ``KeySet`` can be
diagnosed and checked but not loaded or fixed.

``hf://`` names a repository of the Hub (``HF_ENDPOINT`` for another endpoint): a file inside it, or a folder, in
which keyguard looks, as ``from_pretrained`` does, for ``adapter_config.json``, ``model.safetensors.index.json``,
``model.safetensors`` and ``config.json``, in that order.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, urljoin, urlsplit

from keyguard._exceptions import MissingDependencyError, SourceError
from keyguard.sources._keyset import KeySet

SCHEMES: Final = ("hf://", "https://", "http://")
#: JSON files (indexes, configs) above this size are refused.
MAX_JSON: Final = 64 * 1024 * 1024
MAX_HEADER: Final = 100_000_000
_TIMEOUT: Final = 30.0
_FOLDER_FILES: Final = (
    "adapter_config.json",
    "model.safetensors.index.json",
    "model.safetensors",
    "config.json",
)
_PARALLEL: Final = 8


def is_remote(source: object) -> bool:
    """A string naming a remote source (``hf://``, ``https://``, ``http://``)."""
    return isinstance(source, str) and source.startswith(SCHEMES)


@dataclass
class Traffic:
    """What reading a remote source cost: requests made and bytes received (bodies, as the server sent them)."""

    requests: int = 0
    bytes: int = 0
    files: dict[str, int] = field(default_factory=dict)  # URL -> full size of the file, when known
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, received: int) -> None:
        with self.lock:
            self.requests += 1
            self.bytes += received


@dataclass
class Mirror:
    """A remote source laid out locally: ``path`` is what the local readers read, ``url`` what it stands for."""

    path: str
    root: str
    url: str  # the source as named
    root_url: str  # the URL that ``root`` stands for
    traffic: Traffic


def read_remote(source: str, *, container: str | None = None, architecture: str | None = None) -> KeySet:
    """Read a remote source's keys, shapes and dtypes (see the module docstring)."""
    from keyguard.sources._resolve import read_keys

    with mirrored(source) as mirror:
        try:
            keys = read_keys(mirror.path, container=container, architecture=architecture)
        except SourceError as exc:
            raise relabel_error(exc, mirror) from None
        return relabel(keys, mirror)


@contextlib.contextmanager
def mirrored(source: str) -> Iterator[Mirror]:
    """Fetch what the local readers need of ``source`` into a temporary mirror folder, removed afterwards."""
    client = _Client(source)
    root = tempfile.mkdtemp(prefix="keyguard-remote-")
    try:
        yield client.mirror(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def relabel(keys: KeySet, mirror: Mirror) -> KeySet:
    """A ``KeySet`` read from a mirror, named by its URL, with a note on what the reading cost."""
    traffic = mirror.traffic
    total = sum(traffic.files.values())
    note = (
        f"read remotely: {traffic.bytes:,} bytes in {traffic.requests} request(s)"
        + (f" for {len(traffic.files)} file(s) holding {total:,} bytes" if traffic.files else "")
        + " (headers and JSON only: the tensor data stays remote)"
    )
    location = keys.location or mirror.path
    url = _to_url(location, mirror) if location.startswith(mirror.root) else mirror.url
    notes = tuple(n.replace(mirror.root, mirror.root_url) for n in keys.notes)
    return keys.evolve(location=url, notes=(*notes, note))


def relabel_error(exc: SourceError, mirror: Mirror) -> SourceError:
    """The same error, naming the URL instead of the mirror."""
    path = exc.path or mirror.url
    path = _to_url(path, mirror) if path.startswith(mirror.root) else path
    detail = exc.detail.replace(mirror.root, mirror.root_url)
    return type(exc)(path, exc.problem, detail, **exc.ctx)


def _to_url(path: str, mirror: Mirror) -> str:
    rest = os.path.relpath(path, mirror.root).replace(os.sep, "/")
    return mirror.root_url if rest == "." else f"{mirror.root_url}/{rest}"


class _Client:
    """Fetches JSON files and safetensors headers of one remote source."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.traffic = Traffic()
        if _offline():
            raise SourceError(
                source,
                "offline",
                "cannot be read in offline mode (HF_HUB_OFFLINE is set): unset it, or download the files and pass"
                " the local folder",
            )
        try:
            import huggingface_hub  # noqa: F401
        except ImportError:
            raise MissingDependencyError("huggingface_hub", f"to read {source}", "hub") from None
        if source.startswith("hf://"):
            self.base, self.target = _hub_location(source)
            self.root_url = source[: len(source) - len(self.target)].rstrip("/") if self.target else source.rstrip("/")
        else:
            parts = urlsplit(source)
            if not parts.netloc:
                raise SourceError(source, "invalid-url", "is not a URL with a host")
            self.base, self.target = source.rsplit("/", 1)[0] + "/", source.rsplit("/", 1)[1]
            self.root_url = self.base.rstrip("/")

    # -- layout ----------------------------------------------------------------------------------------------
    def mirror(self, root: str) -> Mirror:
        target = self.target
        if target and "." in target.rsplit("/", 1)[-1]:  # a file
            local = self._fetch_file(root, target, required=True)
            return Mirror(local or root, root, self.source, self.root_url, self.traffic)
        prefix = f"{target.rstrip('/')}/" if target else ""
        for name in _FOLDER_FILES:
            if self._fetch_file(root, prefix + name, required=False) is not None:
                if name == "adapter_config.json":
                    self._fetch_file(root, prefix + "adapter_model.safetensors", required=True)
                folder = os.path.join(root, *prefix.rstrip("/").split("/")) if prefix else root
                return Mirror(folder, root, self.source, self.root_url, self.traffic)
        raise SourceError(
            self.source,
            "unrecognised-folder",
            f"holds none of {', '.join(_FOLDER_FILES)} (pickle checkpoints are not read remotely: they would have"
            " to be downloaded whole)",
        )

    def _fetch_file(self, root: str, name: str, *, required: bool) -> str | None:
        local = os.path.join(root, *name.split("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        if name.endswith(".safetensors"):
            found = self._header(name)
            if found is None:
                return self._absent(name, required)
            header, size = found
            with open(local, "wb") as f:
                f.write(header)
                f.truncate(size)  # a sparse hole the size of the data: offsets check out, no byte is stored
            return local
        if name.endswith(".json"):
            body = self._get(name)
            if body is None:
                return self._absent(name, required)
            with open(local, "wb") as f:
                f.write(body)
            if name.endswith(".index.json"):
                self._fetch_shards(root, name, body)
            return local
        raise SourceError(
            self._url(name),
            "unsupported-remote-file",
            "only .safetensors files and JSON files are read remotely (a pickle would have to be downloaded whole)",
        )

    def _absent(self, name: str, required: bool) -> str | None:
        if required:
            raise SourceError(self._url(name), "not-found", "no such file (HTTP 404)")
        return None  # not there: the caller looks for the next candidate

    def _fetch_shards(self, root: str, index_name: str, body: bytes) -> None:
        from concurrent.futures import ThreadPoolExecutor

        try:
            index = json.loads(body)
        except ValueError:
            return  # the local reader says what is wrong with it
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            return
        folder = index_name.rsplit("/", 1)[0] + "/" if "/" in index_name else ""
        shards = sorted({v for v in weight_map.values() if isinstance(v, str)})
        for shard in shards:
            parts = shard.replace("\\", "/").split("/")
            if not shard or shard.startswith("/") or ".." in parts or ":" in shard:
                raise SourceError(
                    self._url(index_name),
                    "shard-outside-folder",
                    f"weight_map names shard {shard!r}, which is not a plain path inside the index's folder; refused",
                )
        with ThreadPoolExecutor(max_workers=min(_PARALLEL, max(1, len(shards)))) as pool:
            list(pool.map(lambda s: self._fetch_file(root, folder + s, required=False), shards))

    # -- HTTP ------------------------------------------------------------------------------------------------
    def _url(self, name: str) -> str:
        return urljoin(self.base, quote(name, safe="/")) if self.source.startswith("hf://") else self.base + name

    def _header(self, name: str) -> tuple[bytes, int] | None:
        url = self._url(name)
        first = self._range(url, 0, 8)
        if first is None:
            return None
        prefix, size = first
        if len(prefix) < 8:
            return prefix, size  # the local reader reports the truncated file
        length = int.from_bytes(prefix, "little")
        if length > MAX_HEADER or 8 + length > size:
            return prefix, size  # ...and the impossible header length
        second = self._range(url, 8, 8 + length)
        if second is None:
            raise SourceError(url, "file-changed", "disappeared while its header was read")
        header, _ = second
        return prefix + header, size

    def _range(self, url: str, start: int, end: int) -> tuple[bytes, int] | None:
        """Bytes ``[start, end)`` of ``url`` and the file's full size; ``None`` for 404."""
        # reading stops after `end` bytes, so a server that ignores the range costs no more than one that honours it
        body, response = self._request(url, end, {"Range": f"bytes={start}-{end - 1}"})
        if response is None:
            return None
        size = _total_size(response, start, len(body))
        body = body[start:end] if response.status_code == 200 else body[: end - start]
        with self.traffic.lock:
            self.traffic.files[url] = size
        return body, size

    def _get(self, name: str) -> bytes | None:
        body, response = self._request(self._url(name), MAX_JSON + 1, {})
        if response is None:
            return None
        if len(body) > MAX_JSON:
            raise SourceError(
                self._url(name), "too-large", f"is larger than {MAX_JSON:,} bytes; not a JSON file to read"
            )
        return body

    def _request(self, url: str, limit: int, headers: dict[str, str]) -> tuple[bytes, Any]:
        from huggingface_hub import get_session

        session = get_session()
        try:
            with session.stream(
                "GET", url, headers={**self._auth(url), **headers}, follow_redirects=True, timeout=_TIMEOUT
            ) as response:
                if response.status_code == 404:
                    self.traffic.add(0)
                    return b"", None
                if response.status_code in (401, 403):
                    raise SourceError(
                        url,
                        "unauthorized",
                        f"access denied (HTTP {response.status_code}): a private or gated repository needs a token"
                        " (set HF_TOKEN, or run `hf auth login`)",
                    )
                if response.status_code not in (200, 206):
                    raise SourceError(url, "http-error", f"the server answered HTTP {response.status_code}")
                chunks: list[bytes] = []
                received = 0
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    received += len(chunk)
                    if received >= limit:
                        break  # a server that ignores the range is not read to the end
                self.traffic.add(received)
                return b"".join(chunks), response
        except SourceError:
            raise
        except Exception as exc:  # connection refused, DNS, TLS, timeouts, offline mode: the source is unreachable
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SourceError(url, "unreachable", f"cannot be reached ({type(exc).__name__}: {reason})") from None

    def _auth(self, url: str) -> dict[str, str]:
        """The Hub token, for the Hub endpoint only (never sent to another host)."""
        endpoint = _endpoint()
        if urlsplit(url).netloc != urlsplit(endpoint).netloc:
            return {}
        from huggingface_hub.utils import build_hf_headers

        try:
            return {k: v for k, v in build_hf_headers().items() if k.lower() == "authorization"}
        except Exception:  # no token, or an unreadable token file: read anonymously
            return {}


def _total_size(response: Any, start: int, received: int) -> int:
    content_range = response.headers.get("content-range", "")
    if "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    length = response.headers.get("content-length", "")
    if response.status_code == 200 and length.isdigit():
        return int(length)
    return start + received


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _hub_location(source: str) -> tuple[str, str]:
    """``hf://ORG/REPO[@REV][/PATH]`` -> (the repository's resolve URL for the revision, PATH)."""
    rest = source[len("hf://") :]
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise SourceError(source, "invalid-url", "expected hf://ORG/REPO[@REVISION][/PATH]")
    org, repo = parts[0], parts[1]
    revision = "main"
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    path = "/".join(parts[2:])
    if not repo or not revision or any(p in (".", "..") for p in parts[2:]):
        raise SourceError(source, "invalid-url", "expected hf://ORG/REPO[@REVISION][/PATH]")
    base = f"{_endpoint()}/{quote(org)}/{quote(repo)}/resolve/{quote(revision, safe='')}/"
    return base, path


def relabel_text(text: str, mirror: Mirror) -> str:
    """``text`` (a message, a JSON document) naming the URL wherever it names the mirror."""
    return text.replace(mirror.root, mirror.root_url)


def relabel_report(report: Any, mirror: Mirror) -> Any:
    """A report made from a mirror, naming the URL (every location, message and example)."""
    escaped = json.dumps(mirror.root)[1:-1]
    document = report.model_dump_json().replace(escaped, json.dumps(mirror.root_url)[1:-1])
    return type(report).model_validate_json(document)
