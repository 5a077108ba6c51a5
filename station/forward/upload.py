"""Sending one file to one key: a single PUT or a resumable multipart upload, then a HEAD.

A file of one part goes with a single PUT carrying its SHA-256 and MD5. A larger one
is a multipart upload whose `UploadId` and acknowledged parts are committed to the
catalog after every part; a restart asks the server (`ListParts`) which parts it
holds and sends only the others. After completion a HEAD must show the file's size,
its `sha256` metadata and the server's checksum (docs/forwarding.md, *Verification*).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import math
import threading
from collections.abc import Callable
from typing import Any

from station.catalog import ForwardPart
from station.catalog.models import utcnow
from station.forward.client import ThrottledBody, error_code, head_object
from station.forward.config import ForwardConfig, in_window
from station.forward.errors import (
    ForwardError,
    ForwardIntegrityError,
    ForwardVerifyError,
    Interrupted,
)
from station.forward.files import Candidate, Digests, alternate_key, b64, object_args, read_part
from station.forward.state import ForwardState
from station.ingest.priority import TokenBucket

log = logging.getLogger(__name__)


class Uploader:
    """The requests of one file's upload, and the state rows that make it resumable."""

    def __init__(
        self,
        config: ForwardConfig,
        state: ForwardState,
        station_id: str,
        *,
        client: Callable[[], Any],
        stop: threading.Event,
        window: tuple[dt.time, dt.time] | None,
        clock: Callable[[], dt.datetime],
        throttle: TokenBucket,
        sent: Callable[[int], None],
        skipped: Callable[[int], None],
    ) -> None:
        self.config = config
        self.bucket = config.bucket
        self.state = state
        self.station_id = station_id
        self.prefix = config.key_prefix(station_id)
        self._client = client
        self.stop = stop
        self.window = window
        self.clock = clock
        self.throttle = throttle
        self.sent = sent
        self.skipped = skipped

    @property
    def client(self) -> Any:
        return self._client()

    def head(self, key: str) -> dict[str, Any] | None:
        return head_object(self.client, str(self.bucket), key)

    def _body(self, data: bytes) -> ThrottledBody:
        return ThrottledBody(data, self.throttle, self.stop, self.sent)

    # --- which key ------------------------------------------------------------------------

    def choose_key(self, f: Candidate) -> str | None:
        """The key to send `f` to, or None when the store has it already (then recorded done).

        Normally its store path under the prefix; when that key holds other content
        (the same name on the other disk, or a name reused after retention deleted
        the first file) the content-addressed alternate key is used instead.
        Nothing is ever overwritten with different content.
        """
        primary = self.prefix + f.rel_path
        for key in (primary, alternate_key(primary, f.sha256)):
            row = self.state.get(key)
            if row is not None and row.sha256 != f.sha256:
                if row.state in ("done", "uploading", "bad"):
                    continue  # another file's object
            elif row is not None and (row.upload_id or row.state == "bad"):
                return key  # our upload in flight (resume it), or our unverified copy
            head = self.head(key)
            if head is None:
                return key
            if head.get("Metadata", {}).get("sha256") == f.sha256 and (
                head.get("ContentLength") == f.size
            ):
                log.info("file %s is in the object store already as %s", f.id, key)
                self.state.put(
                    key,
                    sha256=f.sha256,
                    size=f.size,
                    file_id=f.id,
                    state="done",
                    upload_id=None,
                    etag=head.get("ETag"),
                    checksum=head.get("ChecksumSHA256"),
                    error=None,
                    finished_at=utcnow(),
                )
                return None
        raise ForwardError(f"both {primary} and its alternate key hold other content")

    # --- a single PUT ---------------------------------------------------------------------

    def put(self, f: Candidate, key: str) -> dict[str, Any]:
        """A file of one part: a single PUT carrying its whole SHA-256 and MD5."""
        try:
            data = read_part(f.path, 1, max(f.size, 1), f.size) if f.size else b""
        except FileNotFoundError:
            raise ForwardIntegrityError("the stored file is missing") from None
        sha = hashlib.sha256(data).hexdigest()
        if sha != f.sha256:  # these very bytes are what is sent
            raise ForwardIntegrityError(
                f"the stored file's hash is {sha}, the catalog says {f.sha256}"
            )
        md5 = hashlib.md5(data).hexdigest()
        self.state.put(
            key,
            sha256=f.sha256,
            size=f.size,
            file_id=f.id,
            state="uploading",
            upload_id=None,
            part_size=None,
            mode="put",
            started_at=utcnow(),
        )
        args: dict[str, Any] = {"ContentMD5": b64(bytes.fromhex(md5))}
        if self.config.checksum == "auto":
            args["ChecksumSHA256"] = b64(bytes.fromhex(sha))
        r = self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=self._body(data),
            **args,
            **object_args(f, self.station_id),
        )
        return {
            "etag": r.get("ETag"),
            "mode": "put",
            "md5": md5,
            "sha256_b64": args.get("ChecksumSHA256"),
        }

    # --- a multipart upload ---------------------------------------------------------------

    def _start_upload(self, f: Candidate, key: str, part_size: int) -> tuple[str, str]:
        args: dict[str, Any] = {}
        if self.config.checksum == "auto":
            args["ChecksumAlgorithm"] = "SHA256"
        r = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, **args, **object_args(f, self.station_id)
        )
        # a server without additional checksums ignores the request: fall back to MD5
        mode = "sha256" if r.get("ChecksumAlgorithm") == "SHA256" else "md5"
        self.state.put(
            key,
            sha256=f.sha256,
            size=f.size,
            file_id=f.id,
            state="uploading",
            upload_id=r["UploadId"],
            part_size=part_size,
            mode=mode,
            started_at=utcnow(),
            attempts=0,
        )
        log.info("file %s: multipart upload %s started (%s)", f.id, key, mode)
        return r["UploadId"], mode

    def _server_parts(self, key: str, upload_id: str) -> dict[int, dict[str, Any]] | None:
        """The parts the server holds for an upload, or None if the upload is gone."""
        from botocore.exceptions import ClientError

        out: dict[int, dict[str, Any]] = {}
        try:
            pages = self.client.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )
            for page in pages:
                for p in page.get("Parts", []):
                    out[p["PartNumber"]] = p
        except ClientError as e:
            if error_code(e) in ("NoSuchUpload", "404"):
                return None
            raise
        return out

    def abort(self, key: str, upload_id: str) -> None:
        """Abort an upload on the server (best effort) and forget its parts."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as e:
            log.warning("could not abort upload %s of %s: %s", upload_id, key, e)
        self.state.drop_parts(upload_id)

    def multipart(
        self, f: Candidate, key: str, part_size: int, digests: Digests | None
    ) -> dict[str, Any]:
        """Send (or resume) `f` as a multipart upload and complete it."""
        row = self.state.get(key)
        upload_id = row.upload_id if row is not None else None
        mode = row.mode if row is not None else None
        server: dict[int, dict[str, Any]] | None = None
        if upload_id:
            server = self._server_parts(key, upload_id)
            if server is None:
                done_before = self._completed_before(f, key, upload_id, part_size)
                if done_before is not None:
                    return done_before
                log.info("file %s: upload %s is gone from the server; starting again", f.id, key)
                self.state.drop_parts(upload_id)
                upload_id = None
        if not upload_id:
            upload_id, mode = self._start_upload(f, key, part_size)
            server = {}
        assert server is not None and mode is not None
        recorded = self.state.parts(upload_id)
        count = math.ceil(f.size / part_size)
        done: list[dict[str, Any]] = []
        sent_parts = skipped = 0
        for number in range(1, count + 1):
            if self.stop.is_set():
                raise Interrupted()
            if not in_window(self.window, self.clock().time()):
                raise Interrupted()  # parts start only inside the window
            try:
                data = read_part(f.path, number, part_size, f.size)
            except FileNotFoundError:
                raise ForwardIntegrityError("the stored file is missing") from None
            sha = b64(hashlib.sha256(data).digest())
            md5 = hashlib.md5(data).hexdigest()
            if digests is not None and digests.parts[number - 1] != (sha, md5):
                self.abort(key, upload_id)
                raise ForwardIntegrityError(
                    f"part {number} changed while the file was being forwarded"
                )
            have = server.get(number)
            if have is not None and part_matches(have, recorded.get(number), len(data), sha, md5):
                etag = have["ETag"]
                if number not in recorded:
                    self.state.add_part(upload_id, number, len(data), etag, sha, md5)
                skipped += 1
                self.skipped(len(data))
            else:
                etag = self._upload_part(key, upload_id, number, data, sha, md5, mode)
                self.state.add_part(upload_id, number, len(data), etag, sha, md5)
                sent_parts += 1
            part: dict[str, Any] = {"PartNumber": number, "ETag": etag}
            if mode == "sha256":
                part["ChecksumSHA256"] = sha
            done.append(part)
        if skipped:
            log.info("file %s: resumed %s, %s part(s) already on the server", f.id, key, skipped)
        r = self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": done},
        )
        result = self._composites(upload_id, count)
        assert result is not None
        return {
            **result,
            "etag": r.get("ETag"),
            "mode": mode,
            "parts_sent": sent_parts,
            "parts_skipped": skipped,
        }

    def _composites(self, upload_id: str, count: int) -> dict[str, Any] | None:
        """The object checksums S3 derives from the recorded parts (None: parts missing)."""
        recorded = self.state.parts(upload_id)
        if any(n not in recorded for n in range(1, count + 1)):
            return None
        sha_parts = [base64.b64decode(recorded[n].sha256) for n in range(1, count + 1)]
        md5_parts = [bytes.fromhex(recorded[n].md5) for n in range(1, count + 1)]
        return {
            "upload_id": upload_id,
            "composite_sha256": f"{b64(hashlib.sha256(b''.join(sha_parts)).digest())}-{count}",
            "composite_md5": f"{hashlib.md5(b''.join(md5_parts)).hexdigest()}-{count}",
        }

    def _completed_before(
        self, f: Candidate, key: str, upload_id: str, part_size: int
    ) -> dict[str, Any] | None:
        """An upload the server no longer lists may have been completed just before a crash."""
        row = self.state.get(key)
        result = self._composites(upload_id, math.ceil(f.size / part_size))
        if result is None or row is None or self.head(key) is None:
            return None
        result["mode"] = row.mode
        try:
            self.verify(f, key, result)
        except ForwardVerifyError:
            return None  # not ours, or not whole: sent again
        log.info("file %s: upload %s had been completed before the stop", f.id, key)
        return {**result, "adopted": True}

    def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytes, sha: str, md5: str, mode: str
    ) -> str:
        args: dict[str, Any] = {"ContentMD5": b64(bytes.fromhex(md5))}
        if mode == "sha256":
            args["ChecksumSHA256"] = sha
        r = self.client.upload_part(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=self._body(data),
            **args,
        )
        etag = r["ETag"]
        if mode == "sha256" and r.get("ChecksumSHA256") not in (None, sha):
            raise ForwardVerifyError(f"{key} part {number}: the server computed another SHA-256")
        return etag

    # --- after the upload -----------------------------------------------------------------

    def verify(self, f: Candidate, key: str, result: dict[str, Any]) -> None:
        """HEAD the new object: its size, its metadata and the server's checksum."""
        head = self.head(key)
        problems = []
        if head is None:
            problems.append("the object is not there after the upload")
        else:
            if head.get("ContentLength") != f.size:
                problems.append(f"size {head.get('ContentLength')}, expected {f.size}")
            if head.get("Metadata", {}).get("sha256") != f.sha256:
                problems.append("the sha256 metadata does not match")
            checksum = head.get("ChecksumSHA256")
            etag = str(head.get("ETag", "")).strip('"')
            if result["mode"] == "put":
                if checksum and checksum.split("-")[0] != result.get("sha256_b64", checksum):
                    problems.append("the server's SHA-256 differs from the file's")
                elif not checksum and etag != result["md5"]:
                    problems.append(f"ETag {etag} is not the file's MD5")
            elif result["mode"] == "sha256" and checksum:
                want = result["composite_sha256"]
                if checksum.split("-")[0] != want.split("-")[0]:
                    problems.append("the server's composite SHA-256 differs from the parts sent")
            elif etag != result["composite_md5"]:
                problems.append(f"ETag {etag} is not the parts' composite MD5")
            result["checksum"] = checksum
        if problems:
            raise ForwardVerifyError(f"s3://{self.bucket}/{key}: " + "; ".join(problems))

    def discard(self, f: Candidate, key: str) -> None:
        """An object that did not verify: remove it if we may, and never adopt it."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as e:
            log.warning("could not delete the unverified object %s: %s", key, e)
        self.state.put(key, sha256=f.sha256, size=f.size, file_id=f.id, state="bad", upload_id=None)


def part_matches(
    have: dict[str, Any], rec: ForwardPart | None, size: int, sha: str, md5: str
) -> bool:
    """Whether the server's part is these very bytes (so it need not be sent again)."""
    if have.get("Size") != size:
        return False
    etag = str(have.get("ETag", "")).strip('"')
    if have.get("ChecksumSHA256"):
        return have["ChecksumSHA256"] == sha
    if rec is not None and rec.sha256 == sha and rec.md5 == md5:
        return rec.etag.strip('"') == etag  # the part we sent and recorded
    return etag == md5  # acknowledged but not recorded (a crash in between)
