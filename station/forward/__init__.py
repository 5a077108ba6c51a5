"""Forwarding: copies of collected files sent on to the force's central S3 object store.

Optional and off by default (`[forward]` in the configuration). A `Forwarder`
runs in its own thread and sends every stored, not-deleted file that is not yet
in the object store: protected footage (IMP, important, evidence, legal hold)
first, then oldest first. Local copies are never touched: retention stays in
charge of them.

- Each file goes to `<prefix><officer_no>/<serial>/<collection date>/<name>`
  (its store path below the prefix), with its SHA-256, officer, serial, card
  path, recording time and level as object metadata.
- A file larger than one part is sent as a multipart upload whose `UploadId`
  and acknowledged parts are committed to the catalog (tables `forward_objects`,
  `forward_parts`) after every part: a stop, a crash or a
  power cut resumes with `ListParts` and sends only the parts the server lacks.
- Before sending, the file is re-read and must still match the catalog's
  SHA-256 (else it is refused and `store_corrupt` is raised); each part carries
  its SHA-256 (when the server supports additional checksums) and Content-MD5;
  after completion a HEAD checks size, metadata and the server's checksum.
- A token bucket limits the bytes sent per second, and parts are only started
  inside the time window.

The package, one module per concern: `config` (the `[forward]` section, the window),
`client` (the boto3 client, HEAD, throttled bodies), `files` (candidates, keys,
metadata, part hashes), `state` (its rows in the catalog), `legacy` (the one-time
import of an old `forward.db`), `upload` (one file's PUT or multipart upload and its
check) and `forwarder` (the worker loop). See docs/forwarding.md.
"""

from station.forward.config import ForwardConfig, in_window, parse_window, seconds_until_open
from station.forward.errors import ForwardError, ForwardIntegrityError, ForwardVerifyError
from station.forward.files import Candidate, alternate_key
from station.forward.forwarder import Forwarder
from station.forward.legacy import import_forward_db
from station.forward.state import ForwardState

__all__ = [
    "Candidate",
    "ForwardConfig",
    "ForwardError",
    "ForwardIntegrityError",
    "ForwardState",
    "ForwardVerifyError",
    "Forwarder",
    "alternate_key",
    "import_forward_db",
    "in_window",
    "parse_window",
    "seconds_until_open",
]
