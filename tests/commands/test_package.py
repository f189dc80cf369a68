"""`deployc package`: a reproducible bundle whose checksums verify, and refusals of failed, unverifiable or hostile
build dirs and of an --out deployc did not write."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from deployc.cli import main
from deployc.commands.package import package
from deployc.errors import UsageError
from deployc.targets.tflite import TfliteTarget

pytestmark = pytest.mark.skipif(TfliteTarget.available() is not None, reason=str(TfliteTarget.available()))
ROOT = "edge-tflite-int8"


def _members(bundle: Path) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(bundle, "r:gz") as tar:
        return {m.name: (m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()}


def _copy(edge_build, tmp_path: Path) -> Path:
    build_dir = tmp_path / "build"
    shutil.copytree(edge_build.out_dir, build_dir, symlinks=True)
    return build_dir


def _edit_manifest(build_dir: Path, edit) -> None:
    """Change manifest.json as a careless user would, and drop the key file that would catch it."""
    manifest = json.loads((build_dir / "manifest.json").read_text())
    edit(manifest)
    (build_dir / "manifest.json").write_text(json.dumps(manifest))
    (build_dir / ".deployc-build-key.json").unlink()


def test_bundle_is_byte_identical_across_runs_and_its_checksums_verify(edge_build, tmp_path):
    first = package(edge_build.out_dir, "tflite", "int8", tmp_path / "a.tar.gz")
    second = package(edge_build.out_dir, "tflite", "int8", tmp_path / "b.tar.gz")
    data = (tmp_path / "a.tar.gz").read_bytes()
    assert data == (tmp_path / "b.tar.gz").read_bytes() and first["sha256"] == second["sha256"]
    assert data[4:8] == b"\0\0\0\0"  # gzip header mtime
    members = _members(tmp_path / "a.tar.gz")
    names = [f"{ROOT}/{n}" for n in ("metadata.json", "README.md", "SHA256SUMS", "labels.txt", "edge.int8.tflite")]
    assert list(members) == [ROOT, *names]
    for info, _ in members.values():
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")
    sums = dict(reversed(line.split("  ")) for line in members[f"{ROOT}/SHA256SUMS"][1].decode().splitlines())
    assert sorted(sums) == sorted(n.split("/")[-1] for n in names if not n.endswith("SHA256SUMS"))
    for name, digest in sums.items():
        assert hashlib.sha256(members[f"{ROOT}/{name}"][1]).hexdigest() == digest
    artifact = next(a for a in edge_build.manifest["artifacts"] if a["path"] == "tflite/edge.int8.tflite")
    assert sums["edge.int8.tflite"] == artifact["sha256"]


def test_metadata_and_readme_carry_what_a_device_team_needs(edge_build, tmp_path):
    package(edge_build.out_dir, "tflite", "int8", tmp_path / "edge.tgz")
    members = _members(tmp_path / "edge.tgz")
    meta = json.loads(members[f"{ROOT}/metadata.json"][1])
    (image,) = meta["inputs"]
    assert image["layout"] == "nhwc" and image["shape"] == [1, 16, 16, 3] and image["quantization"]["scale"] > 0
    assert image["normalize"] == {"mean": [0.4, 0.5, 0.6], "std": 0.25}
    assert [o["name"] for o in meta["outputs"]] == ["logits", "features"]
    assert meta["model"] == {
        "name": "edge",
        "version": "2.1",
        "labels_file": "labels.txt",
        "labels": ["cat", "dog", "bird", "fish", "frog"],
    }
    assert members[f"{ROOT}/labels.txt"][1] == b"cat\ndog\nbird\nfish\nfrog\n"
    assert meta["validation"]["gate"]["status"] == "pass" and meta["validation"]["metric"] == "cosine"
    assert meta["build"]["config_sha256"] == edge_build.manifest["config_sha256"]
    manifest_bytes = (edge_build.out_dir / "manifest.json").read_bytes()
    assert meta["build"]["manifest_sha256"] == hashlib.sha256(manifest_bytes).hexdigest()
    readme = members[f"{ROOT}/README.md"][1].decode()
    assert "NOT VALIDATED" not in readme and "sha256sum -c SHA256SUMS" in readme
    assert "| image | [1, 16, 16, 3] | int8 | nhwc | mean [0.4, 0.5, 0.6], std 0.25 |" in readme


def test_failed_build_is_refused_unless_allowed_and_then_says_so(edge_build, tmp_path):
    build_dir = _copy(edge_build, tmp_path)

    def fail(manifest: dict) -> None:
        manifest["status"] = "failed"
        for a in manifest["artifacts"]:
            a["gate"] = {"status": "fail", "reason": "top1 drift +0.2 exceeds budget"}

    _edit_manifest(build_dir, fail)
    with pytest.raises(UsageError, match=r"the build failed; tflite/int8: gate fail \(top1 drift \+0.2"):
        package(build_dir, "tflite", "int8", tmp_path / "x.tar.gz")
    assert not (tmp_path / "x.tar.gz").exists()
    package(build_dir, "tflite", "int8", tmp_path / "x.tar.gz", allow_failed=True)
    readme = _members(tmp_path / "x.tar.gz")[f"{ROOT}/README.md"][1].decode()
    assert "**NOT VALIDATED**: gate fail: top1 drift +0.2 exceeds budget" in readme


def test_unverifiable_builds_are_refused_even_with_allow_failed(edge_build, tmp_path):
    build_dir = _copy(edge_build, tmp_path)
    artifact = build_dir / "tflite" / "edge.int8.tflite"
    data = bytearray(artifact.read_bytes())
    data[-1] ^= 0xFF
    artifact.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="does not match the size and sha256 the manifest records"):
        package(build_dir, "tflite", "int8", tmp_path / "x.tar.gz", allow_failed=True)
    artifact.write_bytes(bytes(data[:-10]))
    with pytest.raises(UsageError, match="does not match the size and sha256"):
        package(build_dir, "tflite", "int8", tmp_path / "x.tar.gz", allow_failed=True)
    artifact.unlink()
    artifact.symlink_to(edge_build.out_dir / "tflite" / "edge.int8.tflite")
    with pytest.raises(UsageError, match="is a symbolic link; deployc never follows links"):
        package(build_dir, "tflite", "int8", tmp_path / "x.tar.gz", allow_failed=True)
    artifact.unlink()
    with pytest.raises(UsageError, match="build artifact '.*edge.int8.tflite' not found"):
        package(build_dir, "tflite", "int8", tmp_path / "x.tar.gz", allow_failed=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]  # nothing half-written beside --out


def test_a_manifest_changed_after_the_build_or_pointing_outside_is_refused(edge_build, tmp_path):
    build_dir = _copy(edge_build, tmp_path)
    manifest = build_dir / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"status": "passed"', '"status": "passed" '))
    with pytest.raises(UsageError, match="changed after the build; the build is unverifiable"):
        package(build_dir, "tflite", "int8", tmp_path / "x.tar.gz", allow_failed=True)
    for path in ("../outside.tflite", "/etc/passwd", "tflite/../../x.tflite"):

        def point(m: dict, path: str = path) -> None:
            next(a for a in m["artifacts"] if a["target"] == "tflite" and a["precision"] == "int8")["path"] = path

        build_dir = _copy(edge_build, tmp_path / path.replace("/", "_"))
        _edit_manifest(build_dir, point)
        with pytest.raises(UsageError, match="points outside"):
            package(build_dir, "tflite", "int8", tmp_path / "x.tar.gz")
    hostile = {
        "[1, 2": "is not valid JSON",
        '{"manifest_version": 1, "name": "m", "artifacts": [], "x": NaN}': "holds NaN or Infinity",
        "[" * 100_000: "nested too deeply",
        '{"manifest_version": 1, "name": "m", "artifacts": [{"target": "tflite"}]}': "precision",
    }
    for text, message in hostile.items():
        (build_dir / "manifest.json").write_text(text)
        with pytest.raises(UsageError, match=message):
            package(build_dir, "tflite", "int8", tmp_path / "x.tar.gz")


def test_special_files_in_the_build_dir_are_refused_without_blocking(edge_build, tmp_path):
    """package reads the build dir through the I/O boundary: a FIFO or a device is never opened for a read."""
    build_dir = _copy(edge_build, tmp_path)
    artifact = build_dir / "tflite" / "edge.int8.tflite"
    artifact.unlink()
    os.mkfifo(artifact)
    with pytest.raises(UsageError, match=r"edge.int8.tflite' is not a regular file \(a FIFO"):
        package(build_dir, "tflite", "int8", tmp_path / "x.tar.gz", allow_failed=True)
    (build_dir / "manifest.json").unlink()
    os.symlink("/dev/zero", build_dir / "manifest.json")
    with pytest.raises(UsageError, match="manifest.json' is a symbolic link"):
        package(build_dir, "tflite", "int8", tmp_path / "x.tar.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]


def test_out_is_never_a_file_deployc_did_not_write(edge_build, tmp_path):
    out = tmp_path / "bundle.tar.gz"
    out.write_bytes(b"someone else's file")
    for force in (False, True):
        with pytest.raises(UsageError, match="exists; pass --force" if not force else "is never replaced"):
            package(edge_build.out_dir, "tflite", "int8", out, force=force)
    assert out.read_bytes() == b"someone else's file"
    out.unlink()
    assert package(edge_build.out_dir, "onnx", "fp32", out)["written"]
    with pytest.raises(UsageError, match="exists; pass --force"):
        package(edge_build.out_dir, "tflite", "int8", out)
    assert package(edge_build.out_dir, "tflite", "int8", out, force=True)["written"]  # our own bundle: replaced
    assert not package(edge_build.out_dir, "tflite", "int8", out)["written"]  # the same bytes: left as it is
    target = tmp_path / "elsewhere.tar.gz"
    link = tmp_path / "link.tar.gz"
    link.symlink_to(target)
    with pytest.raises(UsageError, match="symbolic link"):
        package(edge_build.out_dir, "tflite", "int8", link, force=True)
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_cli_exit_codes_and_messages(edge_build, tmp_path, capsys):
    args = ["package", str(edge_build.out_dir), "--target", "tflite", "--precision", "int8"]
    assert main([*args, "--out", str(tmp_path / "ok.tar.gz")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "bundle.zip")]) == 2
    assert "must end in .tar.gz or .tgz" in capsys.readouterr().err
    assert main([*args[:3], "tflite", "--precision", "fp16", "--out", str(tmp_path / "x.tar.gz")]) == 2
    assert "no artifact tflite/fp16 (artifacts: onnx/fp32, onnx/int8" in capsys.readouterr().err
    assert main(["package", str(tmp_path / "nope"), *args[2:], "--out", str(tmp_path / "y.tar.gz")]) == 2
    assert "not a build folder" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "missing" / "x.tar.gz")]) == 2


def test_is_bundle_reads_only_the_first_member_of_a_hostile_archive(tmp_path):
    from deployc.commands.package_bundle import is_bundle

    fake = io.BytesIO()
    with gzip.GzipFile(fileobj=fake, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        info = tarfile.TarInfo("x/metadata.json")
        body = b'{"bundle_format": "not ours"}'
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    (tmp_path / "f.tar.gz").write_bytes(fake.getvalue())
    assert not is_bundle(tmp_path / "f.tar.gz")
    (tmp_path / "g.tar.gz").write_bytes(os.urandom(64))
    assert not is_bundle(tmp_path / "g.tar.gz")
