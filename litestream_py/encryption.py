"""age encryption of replica objects, as Go Litestream 0.3.13 writes them: age(LZ4 bytes).

The one home of age in lsr. ``AgeKeys`` holds a replica's keys (parsed from its
``age:`` config) and encrypts what the replica writes; ``AgeReader`` wraps a
replica's read side and decrypts what restore, verify and inspection read. An
encrypted object is told apart by the age header it starts with, so a reader
never mistakes one for a corrupt LZ4 frame. Storage clients never see a key.

Memory: a WAL segment (at most a few MiB) is encrypted and decrypted whole; a
snapshot is streamed both ways (pyrage's ``encrypt_io``/``decrypt_io``), with at
most ``DECRYPT_QUEUE`` + 2 pieces of ``DECRYPT_CHUNK`` bytes held while restoring.
"""

from __future__ import annotations

import io
import os
import queue
import threading
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Iterator, cast

# pyrage (and hashlib, which maps OpenSSL) are imported where keys are used:
# every replica's reader passes through here, and an unencrypted sidecar would
# otherwise carry both in its resident memory (tests/test_sidecar_footprint.py).
if TYPE_CHECKING:
    from pyrage import x25519

from .errors import ChecksumMismatchError, ConfigError, EncryptedReplicaError
from .pos import Pos, SnapshotInfo, WALSegmentInfo
from .replica_client import ReplicaReader

__all__ = ["AGE_MAGIC", "AgeKeys", "AgeReader", "is_age", "parse_age"]

# Every age file (binary format) begins with this line.
AGE_MAGIC = b"age-encryption.org/v1"
_AGE_KEYS = {"identities", "recipients", "identities-file", "identity-file"}
# Decrypted snapshot bytes are handed to the reader in pieces this large, at most
# this many waiting: pyrage writes in 8 KiB pieces, each a Python call to queue.
DECRYPT_CHUNK = 1 << 20
DECRYPT_QUEUE = 4


def is_age(head: bytes | memoryview) -> bool:
    """Whether an object starts with the age header (it is age-encrypted)."""
    return bytes(head[: len(AGE_MAGIC)]) == AGE_MAGIC


class AgeKeys:
    """A replica's age keys: recipients to encrypt to, identities to decrypt with."""

    def __init__(self, identities: list[x25519.Identity], recipients: list[x25519.Recipient]) -> None:
        self.identities = identities
        self.recipients = recipients
        # Names the recipient set without naming a key: a change of recipients
        # starts a new generation (see DB), and this is what is compared.
        import hashlib  # here: ~3 ms of every restore's start-up, encrypted or not

        names = sorted(str(r) for r in recipients)
        self.fingerprint = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        # Never a key in a log line or a traceback.
        return f"AgeKeys({len(self.identities)} identities, {len(self.recipients)} recipients)"

    def encrypt(self, data: bytes) -> bytes:
        import pyrage

        out: bytes = pyrage.encrypt(data, self.recipients)
        return out

    def encrypt_chunks(self, chunks: Iterable[bytes], dst: BinaryIO) -> None:
        """Encrypt a stream of plaintext pieces into ``dst`` without holding it whole."""
        import pyrage

        pyrage.encrypt_io(_ChunkReader(iter(chunks)), dst, self.recipients)


def _decrypt_error(exc: Exception | None, what: str, keys: AgeKeys | None) -> Exception:
    """The one-line error for an age object that cannot be decrypted (``exc``: pyrage's, if it tried)."""
    if exc is None or keys is None or not keys.identities:
        return EncryptedReplicaError(
            f"cannot read {what}: the replica is age-encrypted and no age identity is configured "
            "(add age.identities or age.identities-file to the replica in the config)"
        )
    # pyrage's word for "no identity unwraps the file key" (tests/test_encryption.py holds it to it).
    if "no matching keys" in str(exc).lower():
        return EncryptedReplicaError(
            f"cannot read {what}: the replica is age-encrypted and no configured age identity opens it "
            "(configure the identity whose public key was a recipient when it was written)"
        )
    return ChecksumMismatchError(f"cannot decrypt {what}: {exc}")


class AgeReader:
    """The read side of a replica, decrypting age-encrypted objects (plain ones pass through).

    Listings pass straight through: object names and sizes are not encrypted.
    """

    def __init__(self, client: ReplicaReader, keys: AgeKeys | None) -> None:
        self.client = client
        self.keys = keys

    def generations(self) -> list[str]:
        return self.client.generations()

    def snapshots(self, generation: str) -> list[SnapshotInfo]:
        return self.client.snapshots(generation)

    def wal_segments(self, generation: str) -> list[WALSegmentInfo]:
        return self.client.wal_segments(generation)

    def open_snapshot(self, generation: str, index: int) -> BinaryIO:
        src = self.client.open_snapshot(generation, index)
        try:
            peek = getattr(src, "peek", None)
            if peek is None:  # every client's stream peeks; keep any other one correct
                buffered = io.BufferedReader(cast(Any, src))
                src, peek = cast(BinaryIO, buffered), buffered.peek
            if not is_age(peek(len(AGE_MAGIC))):
                return src
            what = f"snapshot {generation}/{index:08x}"
            if self.keys is None or not self.keys.identities:
                raise _decrypt_error(None, what, self.keys)
            return cast(BinaryIO, _DecryptStream(src, self.keys, what))
        except BaseException:
            src.close()
            raise

    def read_wal_segment(self, pos: Pos) -> bytes:
        blob = self.client.read_wal_segment(pos)
        if not is_age(blob):
            return blob
        what = f"wal segment {pos.generation}/{pos.index:08x}_{pos.offset:08x}"
        if self.keys is None or not self.keys.identities:
            raise _decrypt_error(None, what, self.keys)
        import pyrage

        try:
            out: bytes = pyrage.decrypt(blob, self.keys.identities)
        except pyrage.DecryptError as exc:
            raise _decrypt_error(exc, what, self.keys) from None
        return out


class _ChunkReader(io.RawIOBase):
    """A readable stream over an iterator of byte strings (what ``encrypt_io`` reads)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""
        self._off = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self._off >= len(self._buf):
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf, self._off = nxt, 0
        n = min(len(b), len(self._buf) - self._off)
        b[:n] = self._buf[self._off : self._off + n]
        self._off += n
        return n


class _Sink:
    """The writer pyrage's ``decrypt_io`` writes into."""

    def __init__(self, take: Callable[[Any], None]) -> None:
        self._take = take

    def write(self, data: Any) -> int:
        self._take(data)
        return len(data)

    def flush(self) -> None:
        pass


class _Stopped(Exception):
    """The reader closed the stream early: decryption ends."""


class _DecryptStream(io.RawIOBase):
    """Plaintext of an age stream, decrypted on a thread as it is read.

    pyrage pushes its output into a writer; a restore pulls from a stream. A
    bounded queue joins the two, so a large snapshot is never held whole.
    """

    def __init__(self, src: BinaryIO, keys: AgeKeys, what: str) -> None:
        self._src = src
        self._keys = keys
        self._what = what
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=DECRYPT_QUEUE)
        self._stop = threading.Event()
        self._pending = bytearray()
        self._buf = b""
        self._off = 0
        self._eof = False
        self._thread = threading.Thread(target=self._run, name="lsr-age-decrypt", daemon=True)
        self._thread.start()

    # -- the decrypting thread --------------------------------------------------
    def _run(self) -> None:
        import pyrage

        try:
            pyrage.decrypt_io(self._src, _Sink(self._take), self._keys.identities)
            if self._pending:
                self._put(bytes(self._pending))
            self._put(None)
        except _Stopped:
            pass
        except Exception as exc:  # handed to the reader, raised there
            try:
                self._put(exc)
            except _Stopped:
                pass

    def _take(self, data: Any) -> None:
        """pyrage's output, in 8 KiB pieces: queued in DECRYPT_CHUNK pieces."""
        self._pending += data
        if len(self._pending) >= DECRYPT_CHUNK:
            self._put(bytes(self._pending))
            self._pending.clear()

    def _put(self, item: bytes | BaseException | None) -> None:
        while True:
            if self._stop.is_set():
                raise _Stopped()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    # -- the reading side --------------------------------------------------------
    # read() hands out the queued pieces themselves, uncopied (no BufferedReader
    # on top); peek() serves lsr's snapshot header from the first piece.
    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        """Make the current piece non-empty; False at the end of the plaintext."""
        while self._off >= len(self._buf):
            if self._eof:
                return False
            item = self._queue.get()
            if item is None:
                self._eof = True
                return False
            if isinstance(item, BaseException):
                self._eof = True
                # pyrage reports a bad stream as DecryptError, or as an OSError
                # without errno from decrypt_io; the source's own errors pass.
                import pyrage

                if isinstance(item, pyrage.DecryptError) or (type(item) is OSError and not item.errno):
                    raise _decrypt_error(item, self._what, self._keys) from None
                raise item
            self._buf, self._off = item, 0
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(DECRYPT_CHUNK), b""))
        if not self._fill():
            return b""
        if self._off == 0 and size >= len(self._buf):
            self._off = len(self._buf)
            return self._buf
        out = self._buf[self._off : self._off + size]
        self._off += len(out)
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def peek(self, size: int = 0) -> bytes:
        if not self._fill():
            return b""
        return self._buf[self._off : self._off + max(size, 1)]

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            self._thread.join()
            self._src.close()
        super().close()


# -- configuration ---------------------------------------------------------------
def _strings(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"cannot read config: {key} must be a list of strings")
    return value


def _key_lines(text: str) -> list[str]:
    """Keys in a string or an identity file: one a line, '#' comments and blank lines skipped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _read_identity_file(path: str, key: str) -> list[str]:
    path = os.path.expanduser(path)
    try:
        with open(path, encoding="utf-8") as f:
            return _key_lines(f.read())
    except OSError as exc:
        raise ConfigError(f"cannot read {key} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read {key} {path}: not a text file of age identities") from None


_IDENTITY = "identity"
_RECIPIENT = "recipient"


def _parse_keys(lines: list[str], kind: str, what: str, numbered: bool = False) -> list[Any]:
    """Parse keys of one kind; a bad one is named by position (``what``), never by content."""
    import pyrage
    from pyrage import x25519

    parse, error, expected = {
        _IDENTITY: (x25519.Identity.from_str, pyrage.IdentityError, "an age identity (expected AGE-SECRET-KEY-1...)"),
        _RECIPIENT: (x25519.Recipient.from_str, pyrage.RecipientError,
                     "an age recipient (expected a public key age1...)"),
    }[kind]
    out = []
    for j, line in enumerate(lines):
        try:
            out.append(parse(line))
        except error:
            raise ConfigError(f"{what}{f' {j + 1}' if numbered else ''} is not {expected}") from None
    return out


def parse_age(data: Any, where: str) -> AgeKeys:
    """A replica's ``age:`` mapping: identities (inline or from files) and recipients.

    Error texts name the offending entry by position, never by content.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"cannot read config: {where} must be a mapping of identities and recipients")
    unknown = sorted(set(data) - _AGE_KEYS)
    if unknown:
        # Refused, not warned: a misspelt key here may leave a replica unencrypted.
        raise ConfigError(
            f"cannot read config: {where} has unknown key {unknown[0]!r} "
            "(use identities, identities-file, recipients)"
        )
    identities: list[x25519.Identity] = []
    for i, text in enumerate(_strings(data.get("identities"), f"{where}.identities")):
        identities += _parse_keys(_key_lines(text), _IDENTITY, f"cannot read config: {where}.identities[{i}]")
    for key in ("identities-file", "identity-file"):
        for path in _strings(data.get(key), f"{where}.{key}"):
            lines = _read_identity_file(path, f"{where}.{key}")
            identities += _parse_keys(lines, _IDENTITY, f"cannot read {where}.{key} {path}: key", numbered=True)
    recipients: list[x25519.Recipient] = []
    for i, text in enumerate(_strings(data.get("recipients"), f"{where}.recipients")):
        recipients += _parse_keys(_key_lines(text), _RECIPIENT, f"cannot read config: {where}.recipients[{i}]")
    if not identities and not recipients:
        raise ConfigError(f"cannot read config: {where} has no identities and no recipients")
    return AgeKeys(identities, recipients)
