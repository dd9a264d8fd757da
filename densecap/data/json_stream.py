"""Stream the elements of a huge top-level JSON list without loading the whole list.

``iter_json_list(path)`` yields one decoded element at a time. The file is read in chunks and each
element is decoded with ``json.JSONDecoder.raw_decode`` (the C scanner), so memory stays at one
chunk plus one element, however large the file.

Any syntax error, and a file that ends before its list does, raises :class:`JSONStreamError`
naming the file, the byte offset and the line of the problem.
"""
from __future__ import annotations

import codecs
import json
import os
from typing import Any, Iterator, Optional

CHUNK_CHARS = 8 << 20
# A decode failure this far before the end of the buffer is a real error, not a cut element
# (no string in these files is anywhere near this long).
LOOKAHEAD_CHARS = 1 << 20

_WS = " \t\n\r"


class JSONStreamError(ValueError):
    """A JSON file is corrupted or truncated; ``path``, ``byte`` (0-based) and ``line`` say where."""

    def __init__(self, path: str, byte: int, line: int, msg: str) -> None:
        self.path, self.byte, self.line, self.msg = path, byte, line, msg
        super().__init__(f"{path}: invalid JSON at byte {byte} (line {line}): {msg}")


class _Reader:
    def __init__(self, path: str, chunk_chars: int) -> None:
        self.path = path
        self.f = open(path, "rb")
        self.dec = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self.chunk_bytes = chunk_chars
        self.buf = ""
        self.pos = 0  # position in buf
        self.base_byte = 0  # byte offset of buf[0] in the file
        self.base_line = 1  # line number of buf[0]
        self.eof = False

    def close(self) -> None:
        self.f.close()

    def error(self, pos: int, msg: str) -> JSONStreamError:
        head = self.buf[:pos]
        nbytes = len(head) if head.isascii() else len(head.encode("utf-8"))
        return JSONStreamError(self.path, self.base_byte + nbytes, self.base_line + head.count("\n"), msg)

    def refill(self) -> bool:
        """Drop the consumed part of the buffer and append a chunk. False at end of file."""
        if self.eof:
            return False
        done = self.buf[: self.pos]
        if done:
            self.base_byte += len(done) if done.isascii() else len(done.encode("utf-8"))
            self.base_line += done.count("\n")
        raw = self.f.read(self.chunk_bytes)
        try:
            text = self.dec.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            rest = self.buf[self.pos:]
            raise JSONStreamError(
                self.path,
                self.base_byte + len(rest.encode("utf-8")) + e.start,
                self.base_line + rest.count("\n"),
                f"not UTF-8 ({e.reason})",
            ) from None
        if not raw:
            self.eof = True
        self.buf = self.buf[self.pos:] + text
        self.pos = 0
        return bool(raw)

    def skip_ws(self) -> Optional[str]:
        """Advance past whitespace; the next character, or None at end of file."""
        while True:
            buf, n = self.buf, len(self.buf)
            p = self.pos
            while p < n and buf[p] in _WS:
                p += 1
            self.pos = p
            if p < n:
                return buf[p]
            if not self.refill():
                return None


def iter_json_list(path: str, chunk_chars: int = CHUNK_CHARS) -> Iterator[Any]:
    """Yield the elements of the JSON list in ``path`` one by one (see the module docstring)."""
    path = os.fspath(path)
    r = _Reader(path, chunk_chars)
    decoder = json.JSONDecoder()
    raw_decode = decoder.raw_decode
    try:
        c = r.skip_ws()
        if c == "\ufeff":  # byte order mark
            r.pos += 1
            c = r.skip_ws()
        if c is None:
            raise r.error(r.pos, "file is empty, expected a JSON list")
        if c != "[":
            raise r.error(r.pos, f"expected '[' (a JSON list), found {c!r}")
        r.pos += 1
        c = r.skip_ws()
        in_list = True
        if c == "]":  # empty list
            r.pos += 1
            in_list = False
        while in_list:
            if c is None:
                raise r.error(r.pos, "file ends inside the list (truncated?)")
            while True:
                try:
                    obj, end = raw_decode(r.buf, r.pos)
                except json.JSONDecodeError as e:
                    near_end = e.pos >= len(r.buf) - LOOKAHEAD_CHARS
                    rel = e.pos - r.pos  # refill() moves the buffer
                    if near_end and r.refill():
                        continue
                    at = r.pos + rel
                    truncated = r.eof and (at >= len(r.buf.rstrip())
                                           or e.msg.startswith("Unterminated string"))
                    msg = f"{e.msg} (file truncated?)" if truncated else e.msg
                    raise r.error(at, msg) from None
                # an element ending exactly at the buffer end may be cut ("12" of "123"): retry
                if end == len(r.buf) and r.refill():
                    continue
                break
            r.pos = end
            yield obj
            c = r.skip_ws()
            if c == ",":
                r.pos += 1
                c = r.skip_ws()
                if c == "]":
                    raise r.error(r.pos, "trailing comma before ']'")
                continue
            if c == "]":
                r.pos += 1
                break
            if c is None:
                raise r.error(r.pos, "file ends inside the list (truncated?)")
            raise r.error(r.pos, f"expected ',' or ']' after a list element, found {c!r}")
        c = r.skip_ws()
        if c is not None:
            raise r.error(r.pos, f"extra data after the list: {c!r}")
    finally:
        r.close()


def load_json(path: str, what: str = "file") -> Any:
    """``json.load`` of a small file, with errors naming the file, byte offset and line.

    The project's one reader of whole JSON files; ``what`` names the file in the not-found error.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: {what} not found")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise JSONStreamError(path, e.start, line, f"not UTF-8 ({e.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        head = text[: e.pos]
        nbytes = len(head.encode("utf-8")) + (3 if data.startswith(codecs.BOM_UTF8) else 0)
        truncated = " (file truncated?)" if e.pos >= len(text.rstrip()) else ""
        raise JSONStreamError(path, nbytes, e.lineno, e.msg + truncated) from None
