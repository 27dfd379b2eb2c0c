"""Pseudonymous identifiers: the only names of patients and volumes that reach outputs or logs.

A pseudonym is a prefix plus the first 10 hex digits of SHA-256(salt, NUL, key), where the key
is the identifying string (DICOM PatientID, or the source path relative to the source root).
Without the salt the mapping cannot be recomputed from a guessed name; keep a project-specific
salt secret (`pseudonym_salt`) when the ids must not be linkable across datasets.

The readers keep exactly one identifying DICOM attribute, PatientID, and only in memory to
hash it here (so that all sequences of one patient share a pseudonym and a split side); names,
dates, institutions and source file or folder names are never copied to any output or log.
"""

from __future__ import annotations

import hashlib

DEFAULT_SALT = "ctrl-genaug-v1"
"""Documented default salt. Fine for deterministic demos; pass your own for real patient data."""


def pseudonym(key: str, salt: str = DEFAULT_SALT, prefix: str = "pt-", digits: int = 10) -> str:
    """Return `prefix` + the first `digits` hex digits of the salted SHA-256 of `key`.

    Args:
        key: the identifying string; it is hashed, never stored.
        salt: the pseudonymisation salt.
        prefix: prepended to the hex digest (`pt-` for patients).
        digits: number of hex digits kept.

    Returns:
        A string such as `pt-3f9a0c1b2d`.
    """
    digest = hashlib.sha256(salt.encode("utf-8") + b"\0" + key.encode("utf-8")).hexdigest()
    return f"{prefix}{digest[:digits]}"


def volume_id(patient: str, key: str, salt: str = DEFAULT_SALT) -> str:
    """Return the pseudonymous id of one sequence of `patient`, e.g. `pt-3f9a0c1b2d-a41c07`.

    Args:
        patient: the patient's pseudonym.
        key: identifying key of the sequence (source path plus part); hashed, never stored.
        salt: the pseudonymisation salt.
    """
    return f"{patient}-{pseudonym(key, salt, prefix='', digits=6)}"
