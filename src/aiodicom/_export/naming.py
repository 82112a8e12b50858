"""Naming exported files: a template over dataset keywords, rendered safely.

The template is the caller's and is trusted, but it is checked once, up front:
only plain DICOM keywords may appear in fields (no ``{x.attr}``, ``{x[0]}`` or
positional ``{}``), and its literal text must not make an absolute path or a
``.``/``..``/empty component.

**Values from the dataset are untrusted** and are *sanitised*, not rejected:

* ``/``, ``\\``, ``:``, NUL and the other control characters become ``_``; so do
  ``?`` and ``#`` in names under an object-store URL (its client would read them
  as a version or a fragment: ``X?versionId=1`` would be written as ``X``);
* a value made only of dots (``.``, ``..``) has its dots replaced by ``_``;
* a missing or empty value (after stripping spaces) fails the item with
  :class:`NamingError`: a name built from nothing would silently pile files of
  different instances together; unless the field has a *fallback*,
  ``{PatientID:-UNKNOWN}`` (``{InstanceNumber:05d:-0}`` with a format
  specification): literal text used as it is (sanitised like a value).

So ``../../etc/x`` renders as ``.._.._etc_x`` and ``/abs`` as ``_abs``: one path
component each, inside the destination.  Multi-valued elements are joined with
``\\`` first (and so with ``_``).  Format specifications apply to the value
(``{InstanceNumber:05d}``), not to the fallback.

Besides DICOM keywords, two fields name the source: ``{source_name}`` (its file
name, ``IM0001.dcm``) and ``{source_stem}`` (without the last extension,
``IM0001``); a dataset built in memory has none (use a fallback).

A callable template receives the dataset and returns a relative path with ``/``
separators.  Its result is *checked*, not sanitised (it is the caller's code): an
absolute path, a backslash, NUL, or an empty, ``.`` or ``..`` component fails the
item with :class:`NamingError`.
"""

from __future__ import annotations

import difflib
import os
import re
import string
from collections.abc import Callable
from typing import Any, Final

from pydicom.datadict import keyword_dict
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .._errors import NamingError, TemplateError

__all__ = ["DEFAULT_TEMPLATE", "SOURCE_FIELDS", "NamingError", "Template", "TemplateError"]

DEFAULT_TEMPLATE: Final = "{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"

SOURCE_FIELDS: Final = ("source_name", "source_stem")
"""Template fields that name the source file rather than a DICOM attribute."""

_UNSAFE: Final = re.compile(r"[\x00-\x1f\x7f/\\:]")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_CONVERSIONS: Final[dict[str | None, Callable[[Any], Any]]] = {
    None: lambda v: v,
    "s": str,
    "r": repr,
    "a": ascii,
}


_Field = tuple[str, str, str | None, str | None]  # keyword, spec, conversion, fallback


class Template:
    """A compiled naming template.

    Parameters
    ----------
    template : str or callable
        A :meth:`str.format` template over DICOM keywords (and ``source_name``,
        ``source_stem``), with an optional fallback per field
        (``{PatientID:-UNKNOWN}``), or a callable ``(Dataset) -> str`` returning
        a relative ``/``-separated path.

    Raises
    ------
    TemplateError
        For an unknown keyword, a field that is not a plain keyword, an empty
        fallback, or literal text that would leave the destination.
    TypeError
        If `template` is neither a string nor a callable.
    """

    def __init__(self, template: str | Callable[[Dataset], Any]) -> None:
        self.source = template
        self._parts: list[tuple[str, _Field | None]] = []
        if isinstance(template, str):
            self._parts = _compile(template)
        elif not callable(template):
            raise TypeError(f"template must be a str or a callable, not {type(template).__name__}")

    @property
    def keywords(self) -> list[str]:
        """The DICOM keywords the template uses (empty for a callable)."""
        return [
            field[0]
            for _, field in self._parts
            if field is not None and field[0] not in SOURCE_FIELDS
        ]

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def render(self, dataset: Dataset, unsafe: str = "", source_name: str | None = None) -> str:
        """Return the relative path for `dataset`: ``/``-separated, safe to join.

        `unsafe` names more characters that dataset values must not bring in
        (they become ``_``), for destinations that need it.  `source_name` is the
        file name of the source, for ``{source_name}`` and ``{source_stem}``.

        Raises
        ------
        NamingError
            If a value the template needs is missing or empty, or a callable
            template returned an unsafe path.
        """
        if not isinstance(self.source, str):
            return _checked(self.source(dataset))
        out: list[str] = []
        for literal, field in self._parts:
            out.append(literal)
            if field is not None:
                out.append(_render_field(dataset, field, unsafe, source_name))
        return _checked("".join(out))


def _compile(template: str) -> list[tuple[str, _Field | None]]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"bad template {template!r}: {exc}") from None
    parts: list[tuple[str, _Field | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is None:
            parts.append((literal, None))
            continue
        if not name or (name not in keyword_dict and name not in SOURCE_FIELDS):
            raise TemplateError(_unknown_field(template, name))
        spec = spec or ""
        if "{" in spec:
            raise TemplateError(f"bad template {template!r}: nested fields are not allowed")
        if conversion not in _CONVERSIONS:
            raise TemplateError(f"bad template {template!r}: unknown conversion !{conversion}")
        fallback: str | None = None
        if spec.startswith("-"):
            spec, fallback = "", spec[1:]
        elif ":-" in spec:
            spec, fallback = spec.split(":-", 1)
        if fallback is not None and not _sanitised(fallback):
            raise TemplateError(
                f"bad template {template!r}: the fallback of {{{name}}} is empty; "
                f"write {{{name}:-TEXT}}"
            )
        parts.append((literal, (name, spec, conversion, fallback)))
    if not any(field is not None for _, field in parts):
        raise TemplateError(
            f"bad template {template!r}: it has no {{Keyword}} field, so every "
            "dataset would get the same name"
        )
    literals = "".join(literal for literal, _ in parts)
    if "\\" in literals or _CONTROL.search(literals):
        raise TemplateError(
            f"bad template {template!r}: use '/' to separate folders; no backslashes "
            "or control characters"
        )
    probe = "".join(literal + ("x" if field else "") for literal, field in parts)
    try:
        _checked(probe)
    except NamingError as exc:
        raise TemplateError(f"bad template {template!r}: {exc}") from None
    return parts


def _unknown_field(template: str, name: str) -> str:
    if not name:
        return f"bad template {template!r}: positional '{{}}' fields are not allowed"
    if not name.isidentifier():
        return (
            f"bad template {template!r}: field {{{name}}} must be a plain DICOM keyword "
            "(no attributes or indexes)"
        )
    hint = difflib.get_close_matches(name, [*keyword_dict, *SOURCE_FIELDS], n=1)
    did_you_mean = f" (did you mean {{{hint[0]}}}?)" if hint else ""
    return f"bad template {template!r}: unknown DICOM keyword {{{name}}}{did_you_mean}"


def _render_field(dataset: Dataset, field: _Field, unsafe: str, source_name: str | None) -> str:
    keyword, spec, conversion, fallback = field
    try:
        if keyword in SOURCE_FIELDS:
            return _render_source(keyword, spec, conversion, source_name, unsafe)
        return _render_value(dataset, keyword, spec, conversion, unsafe)
    except _Missing as missing:
        if fallback is None:
            raise NamingError(str(missing)) from None
        return _sanitised(fallback, unsafe)


class _Missing(Exception):
    """A field's value is missing or empty (its fallback is used, if any)."""


def _render_source(
    keyword: str, spec: str, conversion: str | None, name: str | None, unsafe: str
) -> str:
    if not name:
        raise _Missing(f"the source has no file name for {{{keyword}}}")
    if keyword == "source_stem":
        stem, dot, _ = name.rpartition(".")
        name = stem if dot and stem else name
    try:
        text = format(_CONVERSIONS[conversion](name), spec)
    except (TypeError, ValueError) as exc:
        raise NamingError(f"cannot format {keyword} ({name!r}) as {spec!r}: {exc}") from None
    text = _sanitised(text, unsafe)
    if not text:
        raise _Missing(f"the source's file name is empty; it cannot name a file ({keyword})")
    return text


def _render_value(
    dataset: Dataset, keyword: str, spec: str, conversion: str | None, unsafe: str = ""
) -> str:
    value = dataset.get(keyword, None)
    if value is None:
        raise _Missing(f"the dataset has no {keyword} for the file name")
    convert = _CONVERSIONS[conversion]
    items = list(value) if isinstance(value, MultiValue | list) else [value]
    try:
        text = "\\".join(format(convert(item), spec) for item in items)
    except (TypeError, ValueError) as exc:
        raise NamingError(f"cannot format {keyword} ({value!r}) as {spec!r}: {exc}") from None
    text = _sanitised(text, unsafe)
    if not text:
        raise _Missing(f"the dataset's {keyword} is empty; it cannot name a file")
    return text


def _sanitised(text: str, unsafe: str = "") -> str:
    """`text` as one safe path component ('' if it is empty or only spaces)."""
    text = text.strip()
    if not text:
        return ""
    text = _UNSAFE.sub("_", text)
    for char in unsafe:
        text = text.replace(char, "_")
    if not text.strip("."):
        text = "_" * len(text)
    return text


def _checked(path: Any) -> str:
    """`path` as a ``str`` if it is a safe relative path, else :class:`NamingError`."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise NamingError(f"the template returned {type(path).__name__}, not a str path")
    if "\x00" in path or "\\" in path:
        raise NamingError(f"unsafe file name {path!r}: NUL or backslash")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise NamingError(f"unsafe file name {path!r}: absolute path")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise NamingError(f"unsafe file name {path!r}: empty, '.' or '..' component")
    return path
