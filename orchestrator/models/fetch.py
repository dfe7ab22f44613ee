"""Download a known model: streamed, with a progress bar, sha256-checked, renamed into place
only when complete."""
from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import PolyllamaError
from .store import MODELS_DIR, Entry, find_file, origin_of


def download(entry: Entry, out_dir: Path = MODELS_DIR, timeout: float = 30, progress=sys.stderr) -> Path:
    existing = find_file(entry.file)
    if existing and origin_of(existing, entry) == "real":
        return existing
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / entry.file
    part = dest.with_name(dest.name + ".part")
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
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise PolyllamaError(f"cannot download {entry.name} from {entry.url}: {reason} "
                             f"(offline? put {entry.file} in a directory of POLYLLAMA_MODEL_PATH)") from None
    if h.hexdigest() != entry.sha256:
        part.unlink(missing_ok=True)
        raise PolyllamaError(f"{entry.name}: sha256 {h.hexdigest()} does not match the manifest's {entry.sha256}")
    os.replace(part, dest)
    return dest
