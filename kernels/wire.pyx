# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Protocol-buffer wire encoding of a page of messages of one shape (segsrv._kernels.wire).

``encode_messages(layout, texts, ints, doubles)`` returns the bytes of k length-delimited fields
numbered ``layout.outer_field``, one per message i < k, whose body is, in this order (with ``text_fields``,
``int_fields`` and ``double_fields`` the layout's, a ``WireLayout`` made and checked once per message
shape):

  for each j, the string field text_fields[j] holding texts[j][i] (UTF-8);
  for each j, the varint field int_fields[j] holding ints[i, j] (protobuf's int64: a negative value is
  its two's complement, ten bytes);
  for each j, the fixed64 field double_fields[j] holding doubles[i, j] (IEEE 754, little-endian).

Appended to a message's serialization (or given to its ``MergeFromString``) the bytes append k
messages to its repeated message field ``layout.outer_field``: that is how Relate's answer carries its hits
(segsrv.ops.relate). Every field is written, zeros too (a proto3 parser reads an explicit zero as the
default, so the decoded message is the same).

Why a kernel: filling k hits of 21 fields through the protobuf runtime is a Python attribute
assignment per field, ~1.7 us per hit, the largest cost of a 20-hit Relate after its counts; here the
whole page is two passes over the values in C (sizes, then bytes), and parsing it back into the
response costs the runtime ~0.15 us per hit. One layer (a checked wrapper around a typed loop holding
the GIL: the work is microseconds, and the texts are Python strings).

Naive twin: segsrv._kernels.naive.encode_messages (struct and a Python varint).
"""
import numpy as np

from segsrv._kernels.bitset import _check

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_Check
from libc.stdint cimport int64_t, uint64_t, uint8_t
from libc.string cimport memcpy

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t *size) except NULL

__all__ = ["WireLayout", "encode_messages", "MAX_FIELD_NUMBER"]

#: protobuf's largest field number (2**29 - 1)
MAX_FIELD_NUMBER = (1 << 29) - 1

cdef int _VARINT = 0, _FIXED64 = 1, _LEN = 2


cdef inline Py_ssize_t _varint_size(uint64_t v) noexcept nogil:
    cdef Py_ssize_t n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline uint8_t *_put_varint(uint8_t *p, uint64_t v) noexcept nogil:
    while v >= 0x80:
        p[0] = <uint8_t>((v & 0x7F) | 0x80)
        v >>= 7
        p += 1
    p[0] = <uint8_t>v
    return p + 1


cdef inline uint8_t *_put_fixed64(uint8_t *p, double x) noexcept nogil:
    cdef uint64_t u
    cdef int b
    memcpy(&u, &x, 8)
    for b in range(8):  # little-endian whatever the host's order
        p[b] = <uint8_t>(u >> (8 * b))
    return p + 8


def _field_numbers(fields, name):
    """A tuple of field numbers, each an int 1..MAX_FIELD_NUMBER."""
    numbers = tuple(fields)
    for f in numbers:
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)):
            raise TypeError(f"{name}: field numbers must be ints, got {type(f).__name__}")
        if not 1 <= f <= MAX_FIELD_NUMBER:
            raise ValueError(f"{name}: field numbers must be 1..{MAX_FIELD_NUMBER}, got {f}")
    return tuple(int(f) for f in numbers)


cdef class WireLayout:
    """The shape of the messages encode_messages writes: the repeated field they go in (`outer_field`) and
    the field number of each column of their texts, ints and doubles (checked here, once)."""

    cdef readonly int64_t outer_field
    cdef readonly tuple text_fields, int_fields, double_fields
    cdef int64_t[::1] _tags  # each column's tag (field number << 3 | wire type): texts, ints, doubles

    def __init__(self, outer_field, text_fields=(), int_fields=(), double_fields=()):
        (outer,) = _field_numbers((outer_field,), "outer_field")
        self.outer_field = outer
        self.text_fields = _field_numbers(text_fields, "text_fields")
        self.int_fields = _field_numbers(int_fields, "int_fields")
        self.double_fields = _field_numbers(double_fields, "double_fields")
        self._tags = np.array([f << 3 | _LEN for f in self.text_fields] + [f << 3 | _VARINT for f in self.int_fields]
                              + [f << 3 | _FIXED64 for f in self.double_fields] + [0], dtype=np.int64)

    def __repr__(self):
        return (f"WireLayout({self.outer_field}, text_fields={self.text_fields}, int_fields={self.int_fields}, "
                f"double_fields={self.double_fields})")


def encode_messages(WireLayout layout not None, texts, ints, doubles):
    """The wire bytes of k messages of `layout` (module docstring) -> bytes.

    texts: a sequence of len(layout.text_fields) sequences of k str; ints: int64[k, len(layout.int_fields)];
    doubles: float64[k, len(layout.double_fields)] (both C-contiguous).
    """
    _check(ints, "ints", np.int64, 2)
    _check(doubles, "doubles", np.float64, 2)
    cdef Py_ssize_t k = ints.shape[0], mt = len(layout.text_fields), i, j
    if ints.shape[1] != len(layout.int_fields) or doubles.shape[1] != len(layout.double_fields):
        raise ValueError(f"ints and doubles must have {len(layout.int_fields)} and {len(layout.double_fields)} "
                         f"columns (the layout's), got shapes {ints.shape} and {doubles.shape}")
    if doubles.shape[0] != k:
        raise ValueError(f"ints and doubles must have as many rows, got {ints.shape[0]} and {doubles.shape[0]}")
    columns = [column if type(column) is list else list(column) for column in texts]
    if len(columns) != mt:
        raise ValueError(f"texts must hold {mt} columns (the layout's text_fields), got {len(columns)}")
    cdef list column
    for j in range(mt):
        column = columns[j]
        if len(column) != k:
            raise ValueError(f"texts[{j}] must hold {k} strings (one per message), got {len(column)}")
        for i in range(k):
            if not PyUnicode_Check(column[i]):
                raise TypeError(f"texts[{j}][{i}] must be a str, got {type(column[i]).__name__}")
    if k == 0:
        return b""
    return _encode(layout.outer_field, columns, layout._tags, ints, doubles)


cdef bytes _encode(int64_t outer_field, list columns, const int64_t[::1] tags, const int64_t[:, ::1] iv,
                   const double[:, ::1] dv):
    cdef Py_ssize_t k = iv.shape[0], mi = iv.shape[1], md = dv.shape[1], mt = len(columns)
    cdef Py_ssize_t i, j, body, total = 0, n
    cdef const char *s
    cdef uint64_t outer_tag = (<uint64_t>outer_field << 3) | _LEN
    # the fixed part of every body: the int and double fields' tags, the doubles' 8 bytes
    cdef Py_ssize_t fixed = md * 8
    for j in range(mt, mt + mi + md):
        fixed += _varint_size(<uint64_t>tags[j])
    bodies = np.empty(k, dtype=np.int64)
    cdef int64_t[::1] bv = bodies
    for i in range(k):
        body = fixed
        for j in range(mt):
            PyUnicode_AsUTF8AndSize(columns[j][i], &n)  # CPython keeps the UTF-8 with the str
            body += _varint_size(<uint64_t>tags[j]) + _varint_size(<uint64_t>n) + n
        for j in range(mi):
            body += _varint_size(<uint64_t>iv[i, j])
        bv[i] = body
        total += _varint_size(outer_tag) + _varint_size(<uint64_t>body) + body
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef uint8_t *p = <uint8_t *>PyBytes_AS_STRING(out)
    for i in range(k):
        p = _put_varint(p, outer_tag)
        p = _put_varint(p, <uint64_t>bv[i])
        for j in range(mt):
            s = PyUnicode_AsUTF8AndSize(columns[j][i], &n)
            p = _put_varint(p, <uint64_t>tags[j])
            p = _put_varint(p, <uint64_t>n)
            memcpy(p, s, n)
            p += n
        for j in range(mi):
            p = _put_varint(p, <uint64_t>tags[mt + j])
            p = _put_varint(p, <uint64_t>iv[i, j])
        for j in range(md):
            p = _put_varint(p, <uint64_t>tags[mt + mi + j])
            p = _put_fixed64(p, dv[i, j])
    return out
