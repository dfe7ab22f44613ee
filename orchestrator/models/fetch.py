"""Download a known model: streamed, with a progress bar, sha256-checked, renamed into place
only when complete."""
from __future__ import annotations

import hashlib
import sys
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import PolyllamaError
from ..files import atomic_path
from .store import MODELS_DIR, Entry, find_file, origin_of


def download(entry: Entry, out_dir: Path = MODELS_DIR, timeout: float = 30, progress=sys.stderr) -> Path:
    existing = find_file(entry.file)
    if existing and origin_of(existing, entry) == "real":
        return existing
    dest = out_dir / entry.file
    with atomic_path(dest) as part:  # renamed into place only if every check below passes
        digest = _stream(entry, part, timeout, progress)
        if digest != entry.sha256:
            raise PolyllamaError(f"{entry.name}: sha256 {digest} does not match the manifest's {entry.sha256}")
    return dest


def _stream(entry: Entry, part: Path, timeout: float, progress) -> str:
    """The download into part, with a progress bar; its sha256."""
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(entry.url, timeout=timeout) as r, open(part, "wb") as f:
            total = int(r.headers.get("Content-Length") or entry.bytes)
            done = 0
            for chunk in iter(lambda: r.read(1 << 20), b""):
                f.write(chunk)
                h.update(chunk)
                done += len(chunk)
                bar = "#" * int(30 * done / max(total, 1))
                progress.write(f"\r{entry.file} [{bar:<30}] {done / 1e6:7.1f}/{total / 1e6:.1f} MB")
                progress.flush()
        progress.write("\n")
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise PolyllamaError(f"cannot download {entry.name} from {entry.url}: {reason} "
                             f"(offline? put {entry.file} in a directory of POLYLLAMA_MODEL_PATH)") from None
    return h.hexdigest()
