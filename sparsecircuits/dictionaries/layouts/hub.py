"""Find a published dictionary on disk: a local path, or a Hugging Face repo (and a folder in it) in the
user's HF cache, the way models are found (`model/load.py`).

Accepted references: a local file or folder; `org/name` or `org/name/sub/folder` (a repo and a path
in it); `hf://org/name/sub/file` (circuit-tracer's form, `?revision=` allowed). A repo is looked up
in the hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, layout
`models--org--name/snapshots/<revision>/`, the revision `refs/<revision or main>` names when
present, else the newest snapshot holding the path). Nothing is downloaded unless `download=True`,
`huggingface_hub` is installed and `HF_HUB_OFFLINE` is not set; then only the named path is fetched.
"""

from __future__ import annotations

from pathlib import Path

from sparsecircuits.model.checkpoint import CheckpointError
from sparsecircuits.model.load import _offline, hf_cache_dir


def split_ref(ref: str) -> tuple[str, str, str | None]:
    """(repo id, path inside the repo, revision or None) of `org/name[/path]` or `hf://...`."""
    ref, revision = str(ref), None
    if ref.startswith("hf://"):
        ref = ref[len("hf://"):]
    if "?revision=" in ref:
        ref, revision = ref.split("?revision=", 1)
    parts = [p for p in ref.split("/") if p]
    if len(parts) < 2:
        raise CheckpointError(f"{ref!r} is neither a local path nor a Hugging Face repo id (org/name[/path])")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision


def cached_path(repo: str, sub: str = "", revision: str | None = None) -> Path | None:
    """`sub` inside the cached snapshot of `repo`, or None when the cache does not hold it."""
    root = hf_cache_dir() / f"models--{repo.replace('/', '--')}"
    snapshots = root / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = root / "refs" / (revision or "main")
    if ref.is_file():
        p = snapshots / ref.read_text().strip() / sub
        if p.exists():
            return p
    if revision and (snapshots / revision / sub).exists():
        return snapshots / revision / sub
    found = [s / sub for s in snapshots.iterdir() if (s / sub).exists()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def resolve(ref: str | Path, *, download: bool = False) -> Path:
    """The local file or folder for `ref` (see the module docstring)."""
    path = Path(ref).expanduser()
    if path.exists():
        return path
    text = str(ref)
    if text.startswith((".", "/", "~")) and not text.startswith("hf://"):
        raise FileNotFoundError(f"dictionary path {text!r} does not exist")
    repo, sub, revision = split_ref(text)
    found = cached_path(repo, sub, revision)
    if found is not None:
        return found
    why = f"no such local path, and {repo!r}{' / ' + sub if sub else ''} is not in the Hugging Face cache " \
          f"{str(hf_cache_dir())!r}"
    if not download or _offline():
        raise FileNotFoundError(why + ("; not downloaded (HF_HUB_OFFLINE is set)" if download else ""))
    try:
        import huggingface_hub  # optional; only for an explicit download
    except ImportError:
        raise FileNotFoundError(why + "; huggingface_hub is not installed, so it was not downloaded") from None
    try:
        patterns = [sub, f"{sub}/*", f"{sub}/**"] if sub else None
        root = Path(huggingface_hub.snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except Exception as e:  # network, authentication and not-found errors all end the same way
        raise FileNotFoundError(f"{why}; the download failed: {e}") from None
    if not (root / sub).exists():
        raise FileNotFoundError(f"{repo!r} has no {sub!r}")
    return root / sub
