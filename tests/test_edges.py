"""Edges of the atomic publish of local files, each decided here and documented in
docs/guarantees.md ("Local files: the edges").

* Overwriting gives the file a new inode: hard links keep the old content, the
  permission bits are kept, the owner becomes the writer.
* Symbolic links are followed (chains too, dangling ones create their target);
  the link stays a link and the temporary file lives beside the target.
* Non-regular targets (``/dev/null``, FIFOs) are written in place, as pydicom does,
  and are never replaced by a regular file.
* A read-only directory holding a writable file: a clear ``PermissionError``,
  the file untouched (no silent fallback to a non-atomic write in place).
* A full disk (ENOSPC) part-way: the error, the old file intact, no temporary file.
* A missing directory, or a parent that is a file: pydicom's error.
* Long names: anything pydicom can create (up to NAME_MAX = 255 bytes, multi-byte
  characters included) works; the temporary name never overflows.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pydicom
import pytest

import aiodicom
from tests.datasets import ct_slice, multiframe
from tests.helpers import RecordingSink, drained, listing, pydicom_bytes

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


# --- overwrite: new inode ------------------------------------------------------------


async def test_overwrite_new_inode_hard_link_keeps_old_mode_kept(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"old content")
    path.chmod(0o604)
    link = tmp_path / "hardlink.dcm"
    os.link(path, link)
    inode = path.stat().st_ino
    ds = ct_slice(16, 16)
    await aiodicom.dcmwrite(path, ds)
    assert path.read_bytes() == pydicom_bytes(ds)
    assert path.stat().st_ino != inode  # a new file took the name
    assert link.read_bytes() == b"old content"  # the hard link is broken off
    assert link.stat().st_nlink == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o604
    assert listing(tmp_path) == ["hardlink.dcm", "x.dcm"]


async def test_overwrite_keeps_special_mode_bits(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"old")
    path.chmod(0o2750)  # setgid bit and group-only read
    await aiodicom.dcmwrite(path, ct_slice(8, 8))
    assert stat.S_IMODE(path.stat().st_mode) == 0o2750


async def test_overwrite_owner_becomes_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"old")
    if os.geteuid() == 0:  # root can give the old file away and show the change
        os.chown(path, 4321, 4321)
        assert path.stat().st_uid == 4321
    await aiodicom.dcmwrite(path, ct_slice(8, 8))
    assert (path.stat().st_uid, path.stat().st_gid) == (os.geteuid(), os.getegid())


# --- symbolic links ---------------------------------------------------------------------


async def test_symlink_into_other_directory_temp_beside_target(tmp_path: Path) -> None:
    links, data = tmp_path / "links", tmp_path / "data"
    links.mkdir()
    data.mkdir()
    target = data / "t.dcm"
    target.write_bytes(b"old")
    (links / "l.dcm").symlink_to(os.path.relpath(target, links))
    ds = ct_slice(16, 16)
    await aiodicom.dcmwrite(links / "l.dcm", ds)
    assert (links / "l.dcm").is_symlink()
    assert target.read_bytes() == pydicom_bytes(ds)
    assert listing(links) == ["l.dcm"]
    assert listing(data) == ["t.dcm"]


async def test_symlink_chain_is_followed(tmp_path: Path) -> None:
    target = tmp_path / "t.dcm"
    target.write_bytes(b"old")
    (tmp_path / "b.dcm").symlink_to("t.dcm")
    (tmp_path / "a.dcm").symlink_to("b.dcm")
    ds = ct_slice(16, 16)
    await aiodicom.dcmwrite(tmp_path / "a.dcm", ds)
    assert (tmp_path / "a.dcm").is_symlink()
    assert (tmp_path / "b.dcm").is_symlink()
    assert target.read_bytes() == pydicom_bytes(ds)
    assert listing(tmp_path) == ["a.dcm", "b.dcm", "t.dcm"]


async def test_dangling_symlink_creates_its_target_like_pydicom(tmp_path: Path) -> None:
    for name, write in (("ours", aiodicom.dcmwrite), ("theirs", None)):
        d = tmp_path / name
        d.mkdir()
        (d / "l.dcm").symlink_to("t.dcm")
        if write is None:
            pydicom.dcmwrite(d / "l.dcm", ct_slice(16, 16))
        else:
            await write(d / "l.dcm", ct_slice(16, 16))
        assert (d / "l.dcm").is_symlink()
        assert listing(d) == ["l.dcm", "t.dcm"]
    assert (tmp_path / "ours" / "t.dcm").read_bytes() == (
        tmp_path / "theirs" / "t.dcm"
    ).read_bytes()


@pytest.mark.parametrize("dangling", [False, True])
async def test_exclusive_refuses_any_symlink_like_pydicom(tmp_path: Path, dangling: bool) -> None:
    link = tmp_path / "l.dcm"
    link.symlink_to("t.dcm")
    if not dangling:
        (tmp_path / "t.dcm").write_bytes(b"old")
    with pytest.raises(FileExistsError) as theirs:
        pydicom.dcmwrite(link, ct_slice(8, 8), overwrite=False)
    with pytest.raises(FileExistsError) as ours:
        await aiodicom.dcmwrite(link, ct_slice(8, 8), exist_ok=False)
    assert str(ours.value) == str(theirs.value)
    assert listing(tmp_path) == (["l.dcm"] if dangling else ["l.dcm", "t.dcm"])


async def test_symlink_to_directory_is_pydicoms_error(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "l").symlink_to("d")
    with pytest.raises(IsADirectoryError) as theirs:
        pydicom.dcmwrite(tmp_path / "l", ct_slice(8, 8))
    with pytest.raises(IsADirectoryError) as ours:
        await aiodicom.dcmwrite(tmp_path / "l", ct_slice(8, 8))
    assert type(ours.value) is type(theirs.value)
    assert listing(tmp_path / "d") == []


# --- non-regular targets ----------------------------------------------------------------


async def test_dev_null_exclusive_refused_like_pydicom() -> None:
    with pytest.raises(FileExistsError) as theirs:
        pydicom.dcmwrite("/dev/null", ct_slice(8, 8), overwrite=False)
    with pytest.raises(FileExistsError) as ours:
        await aiodicom.dcmwrite("/dev/null", ct_slice(8, 8), exist_ok=False)
    assert str(ours.value) == str(theirs.value)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


async def test_fifo_failure_part_way_stays_a_fifo(tmp_path: Path) -> None:
    """A FIFO is written in place; a failed write cannot take back what the reader
    already got (documented), but the FIFO is never replaced by a regular file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    ds = multiframe(9 * 1024 * 1024)
    sink = RecordingSink(
        aiodicom.sinks.LocalFile(fifo),
        fail_at=3,
        error=lambda what: OSError(f"injected: {what}"),
        keep="nothing",
    )
    with drained(fifo) as received, pytest.raises(OSError, match="injected"):
        await aiodicom.dcmwrite(sink, ds)
    expected = pydicom_bytes(ds)
    assert 0 < len(received) < len(expected)
    assert expected.startswith(bytes(received))
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert listing(tmp_path) == ["pipe"]


# --- a read-only directory holding a writable file -------------------------------------

_READONLY_SCENARIO = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, sys.argv[2])
    import anyio, aiodicom, pydicom
    from tests.datasets import ct_slice
    directory = sys.argv[1]
    path = os.path.join(directory, "x.dcm")
    out = {}
    try:
        anyio.run(aiodicom.dcmwrite, path, ct_slice(8, 8))
    except Exception as exc:
        out["ours"] = [type(exc).__name__, str(exc), getattr(exc, "errno", None)]
    else:
        out["ours"] = None
    out["content"] = open(path, "rb").read().decode("latin-1")
    out["listing"] = sorted(os.listdir(directory))
    print(json.dumps(out))
    """
)


def _without_root_powers(argv: list[str]) -> dict[str, Any]:
    """Run `argv` so that directory permissions apply: as root, without the
    capabilities that override them (``setpriv`` drops them from the bounding set,
    so the exec'd process never has them)."""
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv is not None, "setpriv (util-linux) is needed when running as root"
        argv = [setpriv, "--bounding-set", "-dac_override,-dac_read_search,-fowner", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def test_read_only_directory_with_writable_file_raises_clear_permission_error(
    tmp_path: Path,
) -> None:
    """Decided: a clear PermissionError and the file untouched.  pydicom would
    truncate and rewrite the file in place; falling back to that silently would
    break "all or nothing".  To write in place on purpose, pass an open file."""
    directory = tmp_path / "ro"
    directory.mkdir()
    path = directory / "x.dcm"
    path.write_bytes(b"old content")
    path.chmod(0o666)
    directory.chmod(0o555)
    try:
        result = _without_root_powers(
            [sys.executable, "-c", _READONLY_SCENARIO, str(directory), str(ROOT)]
        )
    finally:
        directory.chmod(0o755)
    name, message, code = result["ours"]
    assert (name, code) == ("PermissionError", errno.EACCES)
    assert "temporary file" in message
    assert "atomically" in message
    assert str(path) in message
    assert result["content"] == "old content"
    assert result["listing"] == ["x.dcm"]


# --- a full disk ------------------------------------------------------------------------

_ENOSPC_SCENARIO = textwrap.dedent(
    """
    import errno, io, json, os, sys
    sys.path.insert(0, sys.argv[2])
    import anyio, aiodicom, pydicom
    from tests.datasets import multiframe
    from tests.helpers import open_fds
    directory = sys.argv[1]
    out = {}
    fds = len(open_fds())

    def attempt(name, ds, **kwargs):
        try:
            anyio.run(lambda: aiodicom.dcmwrite(os.path.join(directory, name), ds, **kwargs))
        except OSError as exc:
            return [type(exc).__name__, exc.errno]
        return None

    # a new file larger than the disk
    out["new"] = attempt("new.dcm", multiframe(2 * 1024 * 1024))
    # an existing file, overwritten by a larger one
    old = b"o" * 300_000
    with open(os.path.join(directory, "old.dcm"), "wb") as f:
        f.write(old)
    out["overwrite"] = attempt("old.dcm", multiframe(2 * 1024 * 1024))
    # room for either file but not for both at once: atomic overwrite needs both
    with open(os.path.join(directory, "big.dcm"), "wb") as f:
        f.write(b"b" * 600_000)
    out["both"] = attempt("big.dcm", multiframe(500_000))
    out["old_intact"] = open(os.path.join(directory, "old.dcm"), "rb").read() == old
    out["big_intact"] = open(os.path.join(directory, "big.dcm"), "rb").read() == b"b" * 600_000
    # and a write that fits still works afterwards
    out["fits"] = attempt("small.dcm", multiframe(100_000))
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, multiframe(100_000))
    out["small_ok"] = open(os.path.join(directory, "small.dcm"), "rb").read() == buf.getvalue()
    out["listing"] = sorted(os.listdir(directory))
    out["fds_back"] = len(open_fds()) == fds
    print(json.dumps(out))
    """
)


def _run_on_tiny_disk(directory: Path) -> tuple[str, dict[str, Any]]:
    """Run the ENOSPC scenario on a 1 MiB tmpfs in a private mount namespace
    (as root: ``unshare -m``; otherwise a user namespace, ``unshare -rm``).  Where
    no namespace can be made, a file size limit (RLIMIT_FSIZE) stands in: the
    kernel then fails the same ``write()`` part-way, with EFBIG instead of ENOSPC."""
    script = [sys.executable, "-c", _ENOSPC_SCENARIO, str(directory), str(ROOT)]
    unshare = shutil.which("unshare")
    if unshare is not None:
        flags = "-m" if os.geteuid() == 0 else "-rm"
        mount = f'mount -t tmpfs -o size=1m tmpfs {directory} && exec "$@"'
        done = subprocess.run(
            [unshare, flags, "sh", "-c", mount, "sh", *script],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            return "tmpfs", json.loads(done.stdout)
        if "Traceback" in done.stderr:  # the scenario ran and broke: that is a failure
            raise AssertionError(done.stderr)

    def limit() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, 1024 * 1024))

    done = subprocess.run(script, capture_output=True, text=True, check=False, preexec_fn=limit)
    assert done.returncode == 0, done.stderr
    return "rlimit", json.loads(done.stdout)


async def test_disk_full_part_way(tmp_path: Path) -> None:
    directory = tmp_path / "disk"
    directory.mkdir()
    how, out = _run_on_tiny_disk(directory)
    code = errno.ENOSPC if how == "tmpfs" else errno.EFBIG
    assert out["new"] == ["OSError", code]
    assert out["overwrite"] == ["OSError", code]
    if how == "tmpfs":  # a size limit is per file: it cannot show the sum of two
        assert out["both"] == ["OSError", errno.ENOSPC]
    assert out["old_intact"]
    assert out["big_intact"]
    assert out["fits"] is None
    assert out["small_ok"]
    assert out["listing"] == ["big.dcm", "old.dcm", "small.dcm"]  # no temporary file
    assert out["fds_back"]


# --- missing directory, parent is a file ------------------------------------------------


@pytest.mark.parametrize("exist_ok", [True, False])
async def test_missing_directory_pydicoms_error(tmp_path: Path, exist_ok: bool) -> None:
    path = tmp_path / "missing" / "x.dcm"
    with pytest.raises(FileNotFoundError) as theirs:
        pydicom.dcmwrite(path, ct_slice(8, 8), overwrite=exist_ok)
    with pytest.raises(FileNotFoundError) as ours:
        await aiodicom.dcmwrite(path, ct_slice(8, 8), exist_ok=exist_ok)
    assert str(ours.value) == str(theirs.value)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("exist_ok", [True, False])
async def test_parent_is_a_file_pydicoms_error(tmp_path: Path, exist_ok: bool) -> None:
    (tmp_path / "f").write_bytes(b"a file")
    path = tmp_path / "f" / "x.dcm"
    with pytest.raises(NotADirectoryError) as theirs:
        pydicom.dcmwrite(path, ct_slice(8, 8), overwrite=exist_ok)
    with pytest.raises(NotADirectoryError) as ours:
        await aiodicom.dcmwrite(path, ct_slice(8, 8), exist_ok=exist_ok)
    assert type(ours.value) is type(theirs.value) is NotADirectoryError
    assert str(ours.value) == str(theirs.value)
    assert listing(tmp_path) == ["f"]


# --- long names ---------------------------------------------------------------------------

_NAME_MAX = 255


@pytest.mark.parametrize(
    "name",
    [
        "a" * (_NAME_MAX - 4) + ".dcm",  # exactly NAME_MAX bytes
        "é" * 125 + ".dcm",  # 254 bytes in 129 characters
        "😀" * 62 + ".dcm",  # 252 bytes in 66 characters
        "中" * 83 + ".dcm",  # 253 bytes
    ],
    ids=["ascii-255", "latin-254", "emoji-252", "cjk-253"],
)
@pytest.mark.parametrize("exist_ok", [True, False])
async def test_longest_names_work_temp_name_fits(
    tmp_path: Path, name: str, exist_ok: bool
) -> None:
    assert len(os.fsencode(name)) <= _NAME_MAX
    ds = ct_slice(8, 8)
    await aiodicom.dcmwrite(tmp_path / name, ds, exist_ok=exist_ok)
    assert (tmp_path / name).read_bytes() == pydicom_bytes(ds)
    assert listing(tmp_path) == [name]


async def test_name_over_name_max_is_pydicoms_error(tmp_path: Path) -> None:
    path = tmp_path / ("a" * (_NAME_MAX + 1))
    with pytest.raises(OSError, match="too long") as theirs:
        pydicom.dcmwrite(path, ct_slice(8, 8))
    with pytest.raises(OSError, match="too long") as ours:
        await aiodicom.dcmwrite(path, ct_slice(8, 8))
    assert ours.value.errno == theirs.value.errno == errno.ENAMETOOLONG
    assert str(ours.value) == str(theirs.value)
    assert listing(tmp_path) == []
