"""De-identify DICOM files while exporting them: ``aiodicom.export(transform=...)``.

    python examples/deidentify_export.py                  # pydicom's examples -> deidentified
    python examples/deidentify_export.py /data/scans out/
    python examples/deidentify_export.py /data/scans s3://bucket/deid   # needs s3fs + credentials

    # the same rules from the command line:
    aiodicom export /data/scans out/ --transform examples/deidentify_export.py:deidentify

Each dataset goes through :func:`deidentify` after it is read and before it is
named and written, so names come from the de-identified values (the default
template uses the new UIDs) and nothing identifying leaves the machine.  The
rules are small and explicit, to show the mechanism; they are NOT a complete
de-identification profile (see DICOM PS3.15 Annex E for one):

* the attributes in :data:`REMOVE` are deleted, in nested sequences too;
* PatientName becomes ``ANONYMOUS``; PatientID becomes a pseudonym;
* the UIDs in :data:`UIDS` get new values, in nested sequences too;
* private elements are removed;
* PatientIdentityRemoved is ``YES`` and DeidentificationMethod says which rules.

Pseudonyms and new UIDs are derived from the original values and a secret
(``DEID_SECRET`` in the environment): the same input gives the same output, so a
study stays one study, references between instances still match, and a rerun
with ``skip_existing=True`` finds what it wrote.  Keep the secret secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
import uuid
from collections.abc import Iterator

import anyio
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

import aiodicom

SECRET = os.environ.get("DEID_SECRET", "change-me: not a secret").encode()

REMOVE = (
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "OtherPatientIDs",
    "OtherPatientNames",
    "OtherPatientIDsSequence",
    "MilitaryRank",
    "EthnicGroup",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "AccessionNumber",
    "StationName",
    "DeviceSerialNumber",
)
"""Attributes deleted wherever they are."""

UIDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "ReferencedSOPInstanceUID",
)
"""UIDs replaced by new ones derived from them (references stay consistent)."""

METHOD = "aiodicom example rules (examples/deidentify_export.py)"


def pseudonym(value: str) -> str:
    """A stable pseudonym for `value` (16 hex digits of an HMAC with the secret)."""
    return hmac.new(SECRET, value.encode(), hashlib.sha256).hexdigest()[:16].upper()


def new_uid(uid: str) -> str:
    """A new UID derived from `uid` and the secret: ``2.25.`` and a UUID made of
    an HMAC of `uid` (a UUID-derived UID, PS3.5 Annex B.2)."""
    digest = hmac.new(SECRET, uid.encode(), hashlib.sha256).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"


def _datasets(dataset: Dataset) -> Iterator[Dataset]:
    """`dataset` and every item of its sequences, at any depth."""
    yield dataset
    for element in list(dataset):
        if element.VR == "SQ":
            for item in element.value:
                yield from _datasets(item)


def deidentify(dataset: Dataset) -> Dataset:
    """Apply the rules above to `dataset` (in place) and return it.

    Module-level, so worker processes and ``--transform`` can import it.
    """
    dataset.remove_private_tags()
    for item in _datasets(dataset):
        for keyword in REMOVE:
            if keyword in item:
                delattr(item, keyword)
        for keyword in UIDS:
            value = item.get(keyword)
            if value:
                setattr(item, keyword, new_uid(str(value)))
    dataset.PatientName = "ANONYMOUS"
    dataset.PatientID = pseudonym(str(dataset.get("PatientID", "")))
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = METHOD
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in dataset:
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dataset


PYDICOM_EXAMPLES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "waveform_ecg.dcm"]


async def main(source: object, destination: str) -> int:
    report = await aiodicom.export(
        source,
        destination,
        transform=deidentify,
        template="{PatientID}/{StudyInstanceUID}/{SOPInstanceUID}.dcm",
        skip_existing=True,
    )
    for item in report.failures:
        print(f"FAILED {item.source}: {item.error}")
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 3:
        arguments: tuple[object, str] = (sys.argv[1], sys.argv[2])
    else:
        arguments = ([get_testdata_file(name) for name in PYDICOM_EXAMPLES], "deidentified")
    sys.exit(anyio.run(main, *arguments))
