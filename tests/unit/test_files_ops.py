"""Files over JSON lines, without a server: the ops' rows (fields in, commands out),
their events, the chunk line's own length bound, and the console's file commands."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest

from client.commands import COMMANDS, HELP, DownloadFile, Invalid, UploadFile, parse
from client.files import FileCheckError, check_download, safe_file_name, save_file, target_path
from client.render import progress_text
from gateway.errors import ClientError
from gateway.handlers.files import _upload_of, upload_id
from gateway.protocol import Error, JsonCodec, LineSplitter, TextCodec, event_to_dict
from gateway.protocol.events import ChunkStored, FileAck, FileChunk, FileInfo, UploadReady
from gateway.protocol.framing import TOO_LONG
from gateway.protocol.jsonlines import CHUNK_LINE_BYTES, CHUNK_LINE_PREFIX
from gateway.protocol.ops import (
    BY_NAME,
    FILE_CHUNK_BYTES,
    PACED_LIKE_READS,
    PACED_LIKE_SENDS,
    AbortUpload,
    Fetch,
    FinishUpload,
    Ping,
    PutChunk,
    Send,
    StartUpload,
    help_text,
)
from gateway.store.files import CHUNK_BYTES

SHA = hashlib.sha256(b"hello").hexdigest()
UID = "AbCdEfGhIjKlMnOp." + base64.urlsafe_b64encode(b"#general").rstrip(b"=").decode()
KIB = 1024


def line(obj: dict[str, Any]) -> bytes:
    """A request as the client library writes it: compact, ``op`` first."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def one(obj: dict[str, Any]) -> Any:
    [item] = JsonCodec().feed(line(obj))
    return item


def error_of(obj: dict[str, Any]) -> Error:
    item = one(obj)
    assert isinstance(item, Error), item
    return item


# -- the op rows -------------------------------------------------------------------------


def test_upload_fields() -> None:
    cmd = one({"op": "upload", "rid": 1, "to": "#General", "name": "a b.txt", "size": 5,
               "sha256": SHA.upper(), "mime": "text/plain", "cid": "c-1"})  # fmt: skip
    assert cmd == StartUpload("#general", "a b.txt", 5, SHA, "text/plain", "c-1", rid=1)
    bare = one({"op": "upload", "to": "bob", "name": "x", "size": 0, "sha256": SHA})
    assert bare == StartUpload("bob", "x", 0, SHA)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"to": None}, "bad_request"),
        ({"to": "bad name!"}, "bad_name"),
        ({"name": ""}, "bad_request"),
        ({"name": "../etc/passwd"}, "bad_request"),
        ({"name": "a\x1b[2J"}, "bad_request"),
        ({"name": ".."}, "bad_request"),
        ({"name": "x" * 256}, "bad_request"),
        ({"name": 7}, "bad_request"),
        ({"size": -1}, "bad_request"),
        ({"size": True}, "bad_request"),
        ({"size": 1.5}, "bad_request"),
        ({"size": "5"}, "bad_request"),
        ({"sha256": "abc"}, "bad_request"),
        ({"sha256": "g" * 64}, "bad_request"),
        ({"mime": 3}, "bad_request"),
        ({"mime": "x" * 200}, "bad_request"),
        ({"cid": "has space"}, "bad_request"),
    ],
)
def test_upload_refuses_bad_fields(fields: dict[str, Any], code: str) -> None:
    obj = {"op": "upload", "rid": "u", "to": "#general", "name": "f", "size": 5, "sha256": SHA}
    err = error_of(obj | fields)
    assert (err.code, err.rid) == (code, "u")


def test_chunk_fields() -> None:
    data = bytes(range(256)) * 256  # a whole chunk, every byte value
    assert len(data) == FILE_CHUNK_BYTES
    cmd = one({"op": "chunk", "uid": UID, "seq": 3, "data": base64.b64encode(data).decode(),
               "rid": "c"})  # fmt: skip
    assert cmd == PutChunk(UID, 3, data, rid="c")
    assert one({"op": "chunk", "uid": UID, "seq": 0, "data": ""}) == PutChunk(UID, 0, b"")
    assert "data" not in repr(cmd)  # 64 KiB is not for logs


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"data": "not base64!"}, "bad_request"),
        ({"data": "QU=JD"}, "bad_request"),  # padding in the wrong place
        ({"data": "QUJ"}, "bad_request"),  # cut short
        ({"data": 5}, "bad_request"),
        ({"data": None}, "bad_request"),
        ({"data": base64.b64encode(b"x" * (FILE_CHUNK_BYTES + 1)).decode()}, "too_long"),
        ({"seq": -1}, "bad_request"),
        ({"seq": "1"}, "bad_request"),
        ({"seq": False}, "bad_request"),
        ({"uid": "nodot"}, "bad_request"),
        ({"uid": "a.b/c"}, "bad_request"),
        ({"uid": None}, "bad_request"),
    ],
)
def test_chunk_refuses_bad_fields(fields: dict[str, Any], code: str) -> None:
    obj = {"op": "chunk", "rid": 9, "uid": UID, "seq": 0, "data": "QUJD"}
    err = error_of(obj | fields)
    assert (err.code, err.rid) == (code, 9)


def test_finish_abort_and_fetch_fields() -> None:
    assert one({"op": "finish_upload", "uid": UID, "rid": 2}) == FinishUpload(UID, 2)
    assert one({"op": "abort_upload", "uid": UID}) == AbortUpload(UID)
    assert one({"op": "fetch", "fid": "Ab_-9"}) == Fetch("Ab_-9")
    assert one({"op": "fetch", "fid": "Ab", "from_chunk": 4}) == Fetch("Ab", 4)
    for bad in ({"op": "finish_upload"}, {"op": "abort_upload", "uid": 3},
                {"op": "fetch"}, {"op": "fetch", "fid": "a/b"}, {"op": "fetch", "fid": "x" * 65},
                {"op": "fetch", "fid": "ab", "from_chunk": -1}):  # fmt: skip
        assert error_of(bad).code == "bad_request", bad


def test_file_ops_are_json_only_and_paced() -> None:
    for name in ("upload", "chunk", "finish_upload", "abort_upload", "fetch"):
        op = BY_NAME[name]
        assert not op.console and op.needs_login
    assert not BY_NAME["chunk"].words and not BY_NAME["finish_upload"].words
    assert StartUpload in PACED_LIKE_SENDS and Send in PACED_LIKE_SENDS
    assert PutChunk not in PACED_LIKE_SENDS  # a 5 MB file is 80 chunks: one message
    assert Fetch in PACED_LIKE_READS
    # The text framing answers the words with what to use instead.
    codec = TextCodec()
    [upload, download] = codec.feed(b"/upload x.bin\r\n/download 3\r\n")
    assert isinstance(upload, Error) and "console client" in upload.message
    assert isinstance(download, Error) and "link" in download.message
    text_help = help_text()
    assert "/upload" in text_help and "finish_upload" not in text_help
    assert "/upload" not in help_text(console=True)  # the console has its own /upload


def test_the_protocol_and_the_store_agree_on_the_chunk() -> None:
    assert FILE_CHUNK_BYTES == CHUNK_BYTES


# -- events ------------------------------------------------------------------------------


def test_file_events() -> None:
    info = FileInfo("fid1", "a.txt", 5, SHA, "text/plain")
    assert event_to_dict(UploadReady(UID, CHUNK_BYTES, 2, rid=1)) == {
        "type": "upload", "uid": UID, "chunk_bytes": 65536, "chunks": 2, "rid": 1}  # fmt: skip
    assert event_to_dict(ChunkStored(UID, 1, 70000)) == {
        "type": "chunk", "uid": UID, "seq": 1, "received": 70000}  # fmt: skip
    assert event_to_dict(FileAck("1-0", info, cid=None, rid="r")) == {
        "type": "ack", "id": "1-0", "cid": None, "rid": "r",
        "file": {"fid": "fid1", "name": "a.txt", "size": 5, "sha256": SHA, "mime": "text/plain"},
    }  # fmt: skip
    d = event_to_dict(FileChunk("fid1", 0, b"hello", True, 5, rid=3))
    assert d == {"type": "file_chunk", "fid": "fid1", "seq": 0, "size": 5, "last": True,
                 "data": "aGVsbG8=", "rid": 3}  # fmt: skip
    # A whole chunk's event fits the client's line, and is far under a megabyte.
    encoded = JsonCodec().encode(FileChunk("f", 0, b"\xff" * CHUNK_BYTES, False, 1 << 20))
    assert len(encoded) < CHUNK_LINE_BYTES


def test_upload_ids_carry_the_conversation() -> None:
    for conversation in ("#general", "#team-1", "#42", "dm:alice:bob", "dm:a.b:c_d", "dm:1:2"):
        uid = upload_id(conversation, "F1d_-x")
        assert _upload_of(uid) == (conversation, "F1d_-x")
        assert one({"op": "finish_upload", "uid": uid}) == FinishUpload(uid)
    forged = ["x.", "x.!!", "x." + base64.urlsafe_b64encode(b"#Bad Room").decode().rstrip("="),
              "x." + base64.urlsafe_b64encode(b"{c:x}").decode().rstrip("="),
              "x." + base64.urlsafe_b64encode(b"dm:a").decode().rstrip("="),
              "x." + base64.urlsafe_b64encode(b"dm:A:b").decode().rstrip("=")]  # fmt: skip
    for uid in forged:
        with pytest.raises(ClientError) as err:
            _upload_of(uid)
        assert err.value.code == "not_found", uid


# -- the chunk line's bound ----------------------------------------------------------------


def chunk_line(size: int) -> bytes:
    head = line({"op": "chunk", "rid": "big", "uid": UID, "seq": 0, "data": ""})[:-3]
    assert head.startswith(CHUNK_LINE_PREFIX)
    return head + b"A" * (size - len(head) - 3) + b'"}\n'


def test_a_90_kib_chunk_line_passes_and_any_other_is_too_long() -> None:
    codec = JsonCodec(max_line_bytes=16 * KIB)
    big = chunk_line(90 * KIB)
    assert len(big) == 90 * KIB
    [item] = codec.feed(big)
    # Read whole, then judged by the chunk's rules (this base64 is too long a chunk).
    assert isinstance(item, Error) and (item.code, item.rid) == ("too_long", "big")
    assert "chunk is at most" in item.message
    send = line({"op": "send", "to": "#general", "text": "x" * (90 * KIB)})
    spaced = b'{"op": "chunk", ' + big[len(CHUNK_LINE_PREFIX) :]  # not the exact prefix
    for other in (send, spaced):
        first, after = codec.feed(other + b'{"op":"ping","rid":2}\n')
        assert isinstance(first, Error) and first.code == "too_long"
        assert "16384 bytes" in first.message
        assert after == Ping(rid=2)  # the connection's next line is read as usual


def test_a_whole_chunk_in_base64_fits_its_line() -> None:
    data = base64.b64encode(random.Random(1).randbytes(FILE_CHUNK_BYTES)).decode()
    longest = line({"op": "chunk", "uid": "A" * 64 + "." + "B" * 128, "seq": 999_999,
                    "data": data, "rid": "r" * 64})  # fmt: skip
    escaped = longest.replace(b"/", b"\\/")  # as some JSON encoders write it
    assert len(longest) < len(escaped) < CHUNK_LINE_BYTES
    [cmd] = JsonCodec().feed(escaped)
    assert isinstance(cmd, PutChunk) and base64.b64encode(cmd.data).decode() == data


def test_a_chunk_line_past_its_own_bound_is_dropped() -> None:
    codec = JsonCodec()
    [err] = codec.feed(chunk_line(CHUNK_LINE_BYTES + 2))
    assert isinstance(err, Error) and err.code == "too_long"
    assert str(CHUNK_LINE_BYTES) in err.message
    # Arriving in pieces: refused once past the bound, the rest dropped unbuffered.
    codec = JsonCodec()
    over = chunk_line(200 * KIB)
    out = []
    for i in range(0, len(over), 7000):
        out += codec.feed(over[i : i + 7000])
        assert codec.buffered <= CHUNK_LINE_BYTES + 7000
    assert [e.code for e in out if isinstance(e, Error)] == ["too_long"]
    assert codec.feed(b'{"op":"ping"}\n') == [Ping()]


def test_a_chunk_line_arriving_does_not_count_as_unread_input() -> None:
    """The session pauses reading past 64 KiB unread and resumes below 32 KiB: a chunk
    line still arriving must not count, or a line longer than that would never end."""
    codec = JsonCodec()
    big = chunk_line(90 * KIB)
    codec.push(b'{"op":"ping"}\n' + big[: 80 * KIB])
    assert codec.buffered == len(b'{"op":"ping"}\n')
    assert codec.next() == Ping()
    assert codec.next() is None and codec.buffered == 0
    codec.push(big[80 * KIB :] + big[:10])  # whole, then the start of another
    assert codec.buffered == len(big)
    assert isinstance(codec.next(), Error)  # too long a chunk (see above), but read
    assert codec.buffered == 0
    # Any other partial line counts as before.
    other = JsonCodec()
    other.push(b'{"op":"send","text":"' + b"x" * 1000)
    assert other.buffered == 1000 + 21


@pytest.mark.parametrize("step", [1, 3, 4096, 65536])
def test_the_splitter_chooses_the_bound_from_the_first_bytes(step: int) -> None:
    s = LineSplitter(10, b"{wide", 30)
    data = b"{wide" + b"w" * 20 + b"\n" + b"narrow----too long\n" + b"{wid" + b"e" * 40 + b"\nok\n"
    got: list[Any] = []
    for i in range(0, len(data), step):
        got += s.feed(data[i : i + step])
    assert got == [b"{wide" + b"w" * 20, TOO_LONG, TOO_LONG, b"ok"]
    assert s.buffered == 0 and s.wide_partial == 0
    # A bound smaller than the normal one changes nothing.
    assert LineSplitter(10, b"{w", 5).feed(b"{w3456789\n") == [b"{w3456789"]


# -- the console's commands and local files ---------------------------------------------


def test_console_file_commands() -> None:
    assert parse("/upload ~/a.bin") == UploadFile("~/a.bin")
    assert parse("/upload 'my file.txt' #Team") == UploadFile("my file.txt", "#team")
    assert parse("/upload a.bin bob") == UploadFile("a.bin", "bob")
    assert parse("/download 3") == DownloadFile(3)
    assert parse("/download [3] out.bin") == DownloadFile(3, "out.bin")
    assert parse("/download 3 -f") == DownloadFile(3, None, True)
    assert parse("/download 3 out.bin --force") == DownloadFile(3, "out.bin", True)
    assert parse("/download -f 3 out.bin") == DownloadFile(3, "out.bin", True)
    for bad in ("/upload", "/upload a b c", "/upload 'open", "/upload a.bin bad!name",
                "/download", "/download x", "/download 3 a b", "/download -f"):  # fmt: skip
        assert isinstance(parse(bad), Invalid), bad
    assert "/upload " in COMMANDS and "/download " in COMMANDS
    assert "/upload <path>" in HELP and "-f overwrites" in HELP


def test_safe_names_and_targets(tmp_path: Path) -> None:
    assert safe_file_name("report.pdf") == "report.pdf"
    assert safe_file_name("../../etc/passwd") == "passwd"
    assert safe_file_name("..\\..\\boot.ini") == "boot.ini"
    assert safe_file_name(".bashrc") == "bashrc"
    assert safe_file_name("a\x1b[2Jb") == "a_[2Jb"
    assert safe_file_name("..") == safe_file_name("") == safe_file_name("/") == "download"
    assert len(safe_file_name("é" * 300).encode()) <= 255
    assert target_path("../x.bin", None) == Path("x.bin")
    assert target_path("x.bin", str(tmp_path)) == tmp_path / "x.bin"
    assert target_path("x.bin", str(tmp_path / "y.bin")) == tmp_path / "y.bin"


def test_saving_never_overwrites_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    save_file(path, b"one", force=False)
    with pytest.raises(FileExistsError):
        save_file(path, b"two", force=False)
    assert path.read_bytes() == b"one"
    save_file(path, b"three", force=True)
    assert path.read_bytes() == b"three"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temporary file left
    file = {"size": 5, "sha256": SHA}
    check_download(b"hello", file)
    with pytest.raises(FileCheckError):
        check_download(b"hellO", file)
    with pytest.raises(FileCheckError):
        check_download(b"hello!", file)


def test_progress_text() -> None:
    assert progress_text("uploading a", 0, 100) == "uploading a [--------------------] 0% 0 B/100 B"
    assert progress_text("x", 50, 100, width=10) == "x [#####-----] 50% 50 B/100 B"
    assert progress_text("x", 0, 0, width=4) == "x [####] 100% 0 B/0 B"
    assert progress_text("x\x1b", 5 << 20, 5 << 20, width=2).startswith("x\\x1b [##] 100% 5 MiB")
