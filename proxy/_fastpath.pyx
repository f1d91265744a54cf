# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Compiled fast path: reads JSON-RPC envelopes and MCP headers from raw bytes."""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject, PyTypeObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.string cimport memcmp, memcpy

cdef extern from "<string.h>" nogil:
    void *memmem(const void *haystack, size_t haystacklen, const void *needle, size_t needlelen)
from libc.math cimport nearbyint
from libc.time cimport time_t, tm

# The byte loops are C in _fastpath_scan.h (declared in _fastpath_scan.pxd): strict JSON
# validation, value skipping and the slotted-instance helpers. This file reads the
# JSON-RPC members routing needs on top of them.
from proxy._fastpath_scan cimport (
    FP_E_DEPTH,
    FP_E_RANGE,
    FP_E_SYNTAX,
    FP_E_UTF8,
    FP_INF_EDGE,
    FP_MAX_DEPTH,
    fp_fail,
    fp_hex4,
    fp_init,
    fp_new_slotted,
    fp_scan,
    fp_skip,
    fp_slot_offset,
    fp_string,
    fp_ws,
)

fp_init()
if FP_INF_EDGE != str(2**1024 - 2**970).encode():  # the C literal must be exact
    raise ImportError("proxy._fastpath: FP_INF_EDGE is not 2**1024 - 2**970")


from proxy.headers import (
    AUTHORIZATION as _AUTHORIZATION,
    CONTENT_LENGTH as _CONTENT_LENGTH,
    HOST as _HOST,
    LAST_EVENT_ID as _LAST_EVENT_ID,
    MCP_METHOD as _MCP_METHOD,
    MCP_NAME as _MCP_NAME,
    MCP_PROTOCOL_VERSION as _MCP_PROTOCOL_VERSION,
    MCP_SESSION_ID as _MCP_SESSION_ID,
    ORIGIN as _ORIGIN,
    ROUTING_HEADERS as _ROUTING_HEADERS,
    McpHeaders as _McpHeaders,
)
from proxy.upstream.errors import HeadInjection
from proxy.jsonrpc import (
    BATCH as _BATCH,
    JSONRPC_VERSION as _JSONRPC_VERSION,
    NOTIFICATION as _NOTIFICATION,
    PROTOCOL_VERSION_META_KEY as _PROTOCOL_VERSION_META_KEY,
    REQUEST as _REQUEST,
    RESPONSE as _RESPONSE,
    Envelope as _Envelope,
    InvalidEnvelope as _InvalidEnvelope,
    ParseError as _ParseError,
)

__all__ = (
    "Spans",
    "ToolErrors",
    "TraceSpan",
    "encode_audit_lines",
    "encode_otlp_attributes",
    "encode_otlp_spans",
    "parse_traceparent",
    "scan_envelope",
    "scan_headers",
    "scan_response",
    "write_head",
)

# One definition, shared with the twin: C aliases for the loops.
cdef object Envelope = _Envelope
cdef object McpHeaders = _McpHeaders
cdef object InvalidEnvelope = _InvalidEnvelope
cdef object ParseError = _ParseError
cdef object REQUEST = _REQUEST
cdef object NOTIFICATION = _NOTIFICATION
cdef object RESPONSE = _RESPONSE
cdef object BATCH = _BATCH

cdef bytes MCP_SESSION_ID = _MCP_SESSION_ID
cdef bytes MCP_PROTOCOL_VERSION = _MCP_PROTOCOL_VERSION
cdef bytes MCP_METHOD = _MCP_METHOD
cdef bytes MCP_NAME = _MCP_NAME
cdef bytes LAST_EVENT_ID = _LAST_EVENT_ID
cdef bytes ORIGIN = _ORIGIN
cdef bytes HOST = _HOST
cdef bytes CONTENT_LENGTH = _CONTENT_LENGTH
cdef bytes AUTHORIZATION = _AUTHORIZATION

# Member names as UTF-8, compared against raw (or unescaped) key bytes.
cdef bytes K_JSONRPC = b"jsonrpc"
cdef bytes K_METHOD = b"method"
cdef bytes K_ID = b"id"
cdef bytes K_PARAMS = b"params"
cdef bytes K_RESULT = b"result"
cdef bytes K_ERROR = b"error"
cdef bytes K_NAME = b"name"
cdef bytes K_URI = b"uri"
cdef bytes K_META = b"_meta"
cdef bytes K_VERSION = _PROTOCOL_VERSION_META_KEY.encode()
cdef bytes V_JSONRPC = _JSONRPC_VERSION.encode()

cdef enum:
    KEY_BUF = 256        # escaped keys longer than this match nothing we read

# Value types, from the first character of a value.
cdef enum:
    T_ABSENT = 0
    T_STRING = 1
    T_NUMBER = 2
    T_OTHER = 3

# Key ids.
cdef enum:
    K_OTHER = 0
    KEY_JSONRPC
    KEY_METHOD
    KEY_ID
    KEY_PARAMS
    KEY_RESULT
    KEY_NAME
    KEY_URI
    KEY_META
    KEY_VERSION

cdef struct Span:
    Py_ssize_t start     # strings: first byte inside the quotes; others: first byte
    Py_ssize_t end       # strings: the closing quote; others: one past the last byte
    int kind             # T_*
    bint escaped         # a string holding at least one backslash escape

cdef struct Fields:
    Span jsonrpc
    Span method
    Span id
    Span name
    Span uri
    Span version
    bint has_result

ctypedef fp_scan Scan


cdef inline Py_ssize_t scan_string(Scan* sc, Py_ssize_t pos, Span* out) noexcept:
    """Validate the string whose opening quote is at ``pos``; return the offset after it."""
    cdef int escaped = 0
    out.start = pos + 1
    pos = fp_string(sc, pos + 1, &escaped)
    if pos < 0:
        return -1
    out.end = pos
    out.kind = T_STRING
    out.escaped = escaped
    return pos + 1


cdef inline int kind_of(unsigned char c) noexcept:
    if c == 0x22:
        return T_STRING
    if c == 0x2D or 0x30 <= c <= 0x39:
        return T_NUMBER
    return T_OTHER


cdef Py_ssize_t unescape(const unsigned char* s, Py_ssize_t start, Py_ssize_t end,
                         unsigned char* out) noexcept:
    """UTF-8 of a validated string's content; ``out`` holds ``end - start`` bytes."""
    cdef Py_ssize_t k = 0
    cdef unsigned int u
    cdef unsigned char c
    while start < end:
        c = s[start]
        if c != 0x5C:
            out[k] = c
            k += 1
            start += 1
            continue
        c = s[start + 1]
        if c != 0x75:
            out[k] = (0x08 if c == 0x62 else 0x0C if c == 0x66 else 0x0A if c == 0x6E
                      else 0x0D if c == 0x72 else 0x09 if c == 0x74 else c)
            k += 1
            start += 2
            continue
        u = fp_hex4(s + start + 2)
        start += 6
        if 0xD800 <= u <= 0xDBFF:  # validated: a low surrogate escape follows
            u = 0x10000 + ((u - 0xD800) << 10) + (fp_hex4(s + start + 2) - 0xDC00)
            start += 6
        if u < 0x80:
            out[k] = u
            k += 1
        elif u < 0x800:
            out[k] = 0xC0 | (u >> 6)
            out[k + 1] = 0x80 | (u & 0x3F)
            k += 2
        elif u < 0x10000:
            out[k] = 0xE0 | (u >> 12)
            out[k + 1] = 0x80 | ((u >> 6) & 0x3F)
            out[k + 2] = 0x80 | (u & 0x3F)
            k += 3
        else:
            out[k] = 0xF0 | (u >> 18)
            out[k + 1] = 0x80 | ((u >> 12) & 0x3F)
            out[k + 2] = 0x80 | ((u >> 6) & 0x3F)
            out[k + 3] = 0x80 | (u & 0x3F)
            k += 4
    return k


cdef inline bint same(const unsigned char* p, Py_ssize_t size, bytes name) noexcept:
    return size == PyBytes_GET_SIZE(name) and memcmp(p, PyBytes_AS_STRING(name), size) == 0


cdef bint span_equals(const unsigned char* s, Span* sp, bytes name) noexcept:
    """Whether a validated string span decodes to ``name``."""
    cdef unsigned char buf[KEY_BUF]
    cdef Py_ssize_t size = sp.end - sp.start
    if not sp.escaped:
        return same(s + sp.start, size, name)
    if size > KEY_BUF:
        return False
    return same(buf, unescape(s, sp.start, sp.end, buf), name)


cdef int key_id(const unsigned char* s, Span* key, int level) noexcept:
    """Which member ``key`` names, at level 0 (message), 1 (params) or 2 (params._meta)."""
    cdef unsigned char buf[KEY_BUF]
    cdef const unsigned char* p = s + key.start
    cdef Py_ssize_t size = key.end - key.start
    if key.escaped:
        if size > KEY_BUF:
            return K_OTHER
        size = unescape(s, key.start, key.end, buf)
        p = buf
    if level == 0:
        if same(p, size, K_JSONRPC):
            return KEY_JSONRPC
        if same(p, size, K_METHOD):
            return KEY_METHOD
        if same(p, size, K_ID):
            return KEY_ID
        if same(p, size, K_PARAMS):
            return KEY_PARAMS
        if same(p, size, K_RESULT) or same(p, size, K_ERROR):
            return KEY_RESULT
    elif level == 1:
        if same(p, size, K_NAME):
            return KEY_NAME
        if same(p, size, K_URI):
            return KEY_URI
        if same(p, size, K_META):
            return KEY_META
    elif same(p, size, K_VERSION):
        return KEY_VERSION
    return K_OTHER


cdef Py_ssize_t read_string_or_skip(Scan* sc, Py_ssize_t pos, int depth, Span* out) noexcept:
    """A member we keep only when it is a string: record it, or skip it as T_OTHER."""
    if sc.s[pos] == 0x22:
        return scan_string(sc, pos, out)
    out.kind = T_OTHER
    return fp_skip(sc, pos, depth)


cdef Py_ssize_t read_object(Scan* sc, Py_ssize_t pos, int depth, int level, bint top,
                            Fields* f) noexcept:
    """Scan the object at ``pos`` (at ``depth``), recording the members ``level`` wants.

    Level 0 is a message (``top`` False: a batch member, only "method" is read),
    level 1 its ``params``, level 2 ``params._meta``. Later duplicates overwrite.
    """
    cdef const unsigned char* s = sc.s
    cdef Span key
    cdef int which
    pos = fp_ws(s, pos + 1)
    if s[pos] == 0x7D:
        return pos + 1
    while True:
        if s[pos] != 0x22:
            return fp_fail(sc, pos, FP_E_SYNTAX)
        pos = scan_string(sc, pos, &key)
        if pos < 0:
            return -1
        which = key_id(s, &key, level)
        if not top and which != KEY_METHOD:
            which = K_OTHER
        pos = fp_ws(s, pos)
        if s[pos] != 0x3A:
            return fp_fail(sc, pos, FP_E_SYNTAX)
        pos = fp_ws(s, pos + 1)
        if which == K_OTHER:
            pos = fp_skip(sc, pos, depth)
        elif which == KEY_METHOD:
            f.method.kind = kind_of(s[pos])
            pos = read_string_or_skip(sc, pos, depth, &f.method)
        elif which == KEY_JSONRPC:
            pos = read_string_or_skip(sc, pos, depth, &f.jsonrpc)
        elif which == KEY_ID:
            f.id.start = pos
            f.id.kind = kind_of(s[pos])
            pos = fp_skip(sc, pos, depth)
            f.id.end = pos
        elif which == KEY_RESULT:
            f.has_result = True
            pos = fp_skip(sc, pos, depth)
        elif which == KEY_PARAMS or which == KEY_META:
            if which == KEY_PARAMS:
                f.name.kind = T_ABSENT
                f.uri.kind = T_ABSENT
            f.version.kind = T_ABSENT
            if s[pos] == 0x7B:
                pos = read_object(sc, pos, depth + 1, level + 1, True, f)
            else:
                pos = fp_skip(sc, pos, depth)
        elif which == KEY_NAME:
            pos = read_string_or_skip(sc, pos, depth, &f.name)
        elif which == KEY_URI:
            pos = read_string_or_skip(sc, pos, depth, &f.uri)
        else:  # KEY_VERSION
            pos = read_string_or_skip(sc, pos, depth, &f.version)
        if pos < 0:
            return -1
        pos = fp_ws(s, pos)
        if s[pos] == 0x7D:
            return pos + 1
        if s[pos] != 0x2C:
            return fp_fail(sc, pos, FP_E_SYNTAX)
        pos = fp_ws(s, pos + 1)


cdef inline void clear(Fields* f) noexcept:
    f.jsonrpc.kind = T_ABSENT
    f.method.kind = T_ABSENT
    f.id.kind = T_ABSENT
    f.name.kind = T_ABSENT
    f.uri.kind = T_ABSENT
    f.version.kind = T_ABSENT
    f.has_result = False


cdef object text(const unsigned char* s, Span* sp):
    """The str of a string span, or None for any other kind."""
    cdef unsigned char* buf
    cdef Py_ssize_t size
    if sp.kind != T_STRING:
        return None
    if not sp.escaped:
        return PyUnicode_DecodeUTF8(<const char*>s + sp.start, sp.end - sp.start, NULL)
    buf = <unsigned char*>PyMem_Malloc(sp.end - sp.start)
    if buf == NULL:
        raise MemoryError
    try:
        size = unescape(s, sp.start, sp.end, buf)
        return PyUnicode_DecodeUTF8(<const char*>buf, size, NULL)
    finally:
        PyMem_Free(buf)


cdef object parse_error(Scan* sc):
    if sc.err == FP_E_UTF8:
        return ParseError("Parse error: body is not valid UTF-8")
    if sc.err == FP_E_DEPTH:
        return ParseError(f"Parse error: nesting deeper than {FP_MAX_DEPTH}")
    if sc.err == FP_E_RANGE:
        return ParseError(f"Parse error: number out of range at byte {sc.err_pos}")
    if sc.n == 0 or fp_ws(sc.s, 0) == sc.n:
        return ParseError("Parse error: empty body")
    return ParseError(f"Parse error: invalid JSON at byte {sc.err_pos}")


# Results are built without running the classes' Python __init__: a C-level allocation
# that stores every slot through the offset its member descriptor publishes. When a class
# does not look like plain __slots__ (a missing or unexpected descriptor), the fallback
# calls it as Python would.
cdef tuple ENVELOPE_SLOTS = ("kind", "id", "method", "name", "uri", "protocol_version",
                             "methods")
cdef tuple HEADER_SLOTS = ("session_id", "protocol_version", "method", "name",
                           "last_event_id", "origin", "host", "content_length",
                           "authorization", "duplicate")
cdef Py_ssize_t ENVELOPE_OFFSETS[7]
cdef Py_ssize_t HEADER_OFFSETS[10]


cdef bint slot_offsets(object cls, tuple names, Py_ssize_t* out):
    """Fill ``out`` with the slot offsets of ``names``; False if ``cls`` is not plain."""
    cdef Py_ssize_t k
    if set(cls.__slots__) != set(names) or len(cls.__mro__) != 2:
        return False
    for k in range(len(names)):
        out[k] = fp_slot_offset(cls.__dict__[names[k]])
        if out[k] < 0:
            return False
    return True


cdef bint FAST_ENVELOPE = slot_offsets(Envelope, ENVELOPE_SLOTS, ENVELOPE_OFFSETS)
cdef bint FAST_HEADERS = slot_offsets(McpHeaders, HEADER_SLOTS, HEADER_OFFSETS)


cdef object envelope(object kind, object id, object method, object name, object uri,
                     object protocol_version, object methods):
    """``Envelope(kind, id, method, name, uri, protocol_version, methods)``."""
    cdef PyObject* values[7]
    if not FAST_ENVELOPE:
        return Envelope(kind, id, method, name, uri, protocol_version, methods)
    values[0] = <PyObject*>kind
    values[1] = <PyObject*>id
    values[2] = <PyObject*>method
    values[3] = <PyObject*>name
    values[4] = <PyObject*>uri
    values[5] = <PyObject*>protocol_version
    values[6] = <PyObject*>methods
    return fp_new_slotted(<PyTypeObject*>Envelope, ENVELOPE_OFFSETS, values, 7)


cdef object classify(const unsigned char* s, Fields* f):
    """The Envelope of one top-level message, or the InvalidEnvelope to raise."""
    cdef object echo = None
    if f.id.kind == T_STRING or f.id.kind == T_NUMBER:
        echo = PyBytes_FromStringAndSize(<const char*>s + f.id.start, f.id.end - f.id.start)
    if f.jsonrpc.kind != T_STRING or not span_equals(s, &f.jsonrpc, V_JSONRPC):
        return InvalidEnvelope('Invalid Request: "jsonrpc" must be "2.0"', echo)
    if f.method.kind:
        if f.method.kind != T_STRING:
            return InvalidEnvelope("Invalid Request: method must be a string", echo)
        if not f.id.kind:
            return envelope(NOTIFICATION, None, text(s, &f.method), text(s, &f.name),
                            text(s, &f.uri), text(s, &f.version), None)
        if echo is None:
            return InvalidEnvelope("Invalid Request: id must be a string or a number")
        return envelope(REQUEST, echo, text(s, &f.method), text(s, &f.name),
                        text(s, &f.uri), text(s, &f.version), None)
    if f.id.kind and f.has_result:
        if echo is None:
            if f.id.end - f.id.start != 4 or memcmp(s + f.id.start, b"null", 4) != 0:
                return InvalidEnvelope("Invalid Request: id must be a string, number or null")
            echo = PyBytes_FromStringAndSize(<const char*>s + f.id.start, 4)
        return envelope(RESPONSE, echo, None, None, None, None, None)
    return InvalidEnvelope(
        "Invalid Request: not a request, notification or response", echo)


def scan_envelope(bytes body not None):
    """Validate ``body`` as JSON and read the JSON-RPC envelope routing needs.

    Raises ``ParseError`` for anything that is not strict JSON and
    ``InvalidEnvelope`` for JSON that is not a JSON-RPC 2.0 message or batch.
    """
    cdef Scan sc
    cdef Fields f
    cdef const unsigned char* s
    cdef Py_ssize_t pos
    cdef object result = None
    cdef object invalid = None
    cdef list methods
    sc.s = <const unsigned char*>PyBytes_AS_STRING(body)
    sc.n = PyBytes_GET_SIZE(body)
    sc.err = 0
    sc.err_pos = 0
    s = sc.s
    pos = fp_ws(s, 0)
    clear(&f)
    if s[pos] == 0x7B:
        pos = read_object(&sc, pos, 1, 0, True, &f)
        if pos >= 0:
            result = classify(s, &f)
    elif s[pos] == 0x5B:
        pos = fp_ws(s, pos + 1)
        if s[pos] == 0x5D:
            pos += 1
            invalid = InvalidEnvelope("Invalid Request: empty batch")
        else:
            methods = []
            while True:
                if s[pos] == 0x7B:
                    clear(&f)
                    pos = read_object(&sc, pos, 2, 0, False, &f)
                    if pos < 0:
                        break
                    if f.method.kind != T_ABSENT and f.method.kind != T_STRING:
                        if invalid is None:
                            invalid = InvalidEnvelope("Invalid Request: method must be a string")
                    methods.append(text(s, &f.method))
                else:
                    pos = fp_skip(&sc, pos, 1)
                    if pos < 0:
                        break
                    if invalid is None:
                        invalid = InvalidEnvelope(
                            "Invalid Request: batch member is not an object")
                pos = fp_ws(s, pos)
                if s[pos] == 0x5D:
                    pos += 1
                    break
                if s[pos] != 0x2C:
                    pos = fp_fail(&sc, pos, FP_E_SYNTAX)
                    break
                pos = fp_ws(s, pos + 1)
            result = envelope(BATCH, None, None, None, None, None, tuple(methods))
    else:
        pos = fp_skip(&sc, pos, 0)
        invalid = InvalidEnvelope("Invalid Request: not a JSON-RPC message")
    if pos >= 0:
        pos = fp_ws(s, pos)
        if pos != sc.n:
            fp_fail(&sc, pos, FP_E_SYNTAX)
    if sc.err:
        raise parse_error(&sc)
    if invalid is not None:
        raise invalid
    if type(result) is Envelope:
        return result
    raise result


# Which of the headers scan_headers reads are routing headers (may appear only once).
cdef bint DUP_SESSION_ID = MCP_SESSION_ID in _ROUTING_HEADERS
cdef bint DUP_PROTOCOL_VERSION = MCP_PROTOCOL_VERSION in _ROUTING_HEADERS
cdef bint DUP_METHOD = MCP_METHOD in _ROUTING_HEADERS
cdef bint DUP_NAME = MCP_NAME in _ROUTING_HEADERS
cdef bint DUP_LAST_EVENT_ID = LAST_EVENT_ID in _ROUTING_HEADERS
cdef bint DUP_ORIGIN = ORIGIN in _ROUTING_HEADERS
cdef bint DUP_HOST = HOST in _ROUTING_HEADERS
cdef bint DUP_CONTENT_LENGTH = CONTENT_LENGTH in _ROUTING_HEADERS
cdef bint DUP_AUTHORIZATION = AUTHORIZATION in _ROUTING_HEADERS


def scan_headers(list headers not None):
    """Pull the headers routing needs out of an ASGI header list in one pass.

    The first copy of each header wins; ``duplicate`` names the first routing
    header (``ROUTING_HEADERS``) that was sent more than once.
    """
    cdef object session_id = None, protocol_version = None, method = None, name = None
    cdef object last_event_id = None, origin = None, host = None
    cdef object content_length = None, authorization = None, duplicate = None
    cdef bytes key
    cdef object value
    for key, value in headers:
        if key == MCP_SESSION_ID:
            if session_id is None:
                session_id = value
            elif duplicate is None and DUP_SESSION_ID:
                duplicate = key
        elif key == MCP_PROTOCOL_VERSION:
            if protocol_version is None:
                protocol_version = value
            elif duplicate is None and DUP_PROTOCOL_VERSION:
                duplicate = key
        elif key == MCP_METHOD:
            if method is None:
                method = value
            elif duplicate is None and DUP_METHOD:
                duplicate = key
        elif key == MCP_NAME:
            if name is None:
                name = value
            elif duplicate is None and DUP_NAME:
                duplicate = key
        elif key == LAST_EVENT_ID:
            if last_event_id is None:
                last_event_id = value
            elif duplicate is None and DUP_LAST_EVENT_ID:
                duplicate = key
        elif key == ORIGIN:
            if origin is None:
                origin = value
            elif duplicate is None and DUP_ORIGIN:
                duplicate = key
        elif key == HOST:
            if host is None:
                host = value
            elif duplicate is None and DUP_HOST:
                duplicate = key
        elif key == CONTENT_LENGTH:
            if content_length is None:
                content_length = value
            elif duplicate is None and DUP_CONTENT_LENGTH:
                duplicate = key
        elif key == AUTHORIZATION:
            if authorization is None:
                authorization = value
            elif duplicate is None and DUP_AUTHORIZATION:
                duplicate = key
    cdef PyObject* values[10]
    if not FAST_HEADERS:
        h = McpHeaders()
        for k, v in zip(HEADER_SLOTS, (session_id, protocol_version, method, name,
                                       last_event_id, origin, host, content_length,
                                       authorization, duplicate)):
            setattr(h, k, v)
        return h
    values[0] = <PyObject*>session_id
    values[1] = <PyObject*>protocol_version
    values[2] = <PyObject*>method
    values[3] = <PyObject*>name
    values[4] = <PyObject*>last_event_id
    values[5] = <PyObject*>origin
    values[6] = <PyObject*>host
    values[7] = <PyObject*>content_length
    values[8] = <PyObject*>authorization
    values[9] = <PyObject*>duplicate
    return fp_new_slotted(<PyTypeObject*>McpHeaders, HEADER_OFFSETS, values, 10)



# -- audit lines ---------------------------------------------------------------------------

cdef extern from "<time.h>" nogil:
    tm *gmtime_r(const time_t *timep, tm *result)
    size_t strftime(char *s, size_t maxsize, const char *fmt, const tm *t)


cdef struct _Out:
    char *data
    Py_ssize_t size
    Py_ssize_t room


cdef int _put(_Out *out, const char *text, Py_ssize_t n) except -1:
    cdef Py_ssize_t room
    cdef char *grown
    if out.size + n > out.room:
        room = out.room * 2
        if room < out.size + n:
            room = out.size + n
        grown = <char *>PyMem_Realloc(out.data, room)
        if grown == NULL:
            raise MemoryError()
        out.data = grown
        out.room = room
    memcpy(out.data + out.size, text, n)
    out.size += n
    return 0


cdef inline int _put_bytes(_Out *out, bytes text) except -1:
    return _put(out, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text))


@cython.cdivision(True)
cdef int _put_digits(_Out *out, long long value, int width) except -1:
    """`value` in decimal, zero-padded to `width` digits (ValueError when negative)."""
    cdef char digits[24]
    cdef int n = 0
    if value < 0:
        raise ValueError("a negative number in an audit line")
    while value > 0 or n < width:
        digits[23 - n] = <char>(48 + value % 10)
        value //= 10
        n += 1
    return _put(out, digits + 24 - n, n)


cdef inline bint _all_digits(bytes text):
    cdef const char *c = PyBytes_AS_STRING(text)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(text), i
    if n == 0:
        return False
    for i in range(n):
        if c[i] < 48 or c[i] > 57:
            return False
    return True


def encode_audit_lines(list lines, double offset, dict described, object describe,
                       object json_string, object more):
    """See the twin: proxy._fastpath_py.encode_audit_lines."""
    cdef _Out out
    cdef char stamp[32]
    cdef tm when
    cdef time_t second
    cdef long long last = -1
    cdef Py_ssize_t size
    cdef double at
    cdef const char *text
    cdef tuple line
    cdef bytes who
    cdef double micros
    stamp[0] = 0
    out.size = 0
    out.room = 256 * len(lines) + 64
    out.data = <char *>PyMem_Malloc(out.room)
    if out.data == NULL:
        raise MemoryError()
    try:
        for item in lines:
            at = offset + <double>(<tuple>item)[0]
            line = <tuple>(<tuple>item)[1]
            second = <time_t>at
            if second != last:  # formatted once a second, not once a line
                last = second
                if gmtime_r(&second, &when) == NULL:
                    raise ValueError("time out of range")
                strftime(stamp, sizeof(stamp), b"%Y-%m-%dT%H:%M:%S", &when)
            principal = line[0]
            key = (None if principal is None else principal.key,
                   line[1], line[2], line[3], line[4], line[5])
            found = described.get(key)
            who = <bytes>(describe(key, principal) if found is None else found)
            _put(&out, b'{"time":"', 9)
            _put(&out, stamp, len(stamp))
            _put(&out, b".", 1)
            _put_digits(&out, <long long>((at - <double>second) * 1000), 3)
            _put(&out, b'Z",', 3)
            _put_bytes(&out, who)
            _put(&out, b',"outcome":"', 12)
            text = PyUnicode_AsUTF8AndSize(line[6], &size)
            _put(&out, text, size)
            _put(&out, b'","status":', 11)
            _put_digits(&out, <long long>line[7], 1)
            _put(&out, b',"latency_ms":', 14)
            micros = nearbyint(<double>line[8] * 1e6)  # to the µs, half to even
            if micros < 0:
                micros = 0
            _put_digits(&out, <long long>micros // 1000, 1)
            _put(&out, b".", 1)
            _put_digits(&out, <long long>micros % 1000, 3)
            _put(&out, b',"request_id":', 14)
            request_id = line[9]
            if request_id is None:
                _put(&out, b"null", 4)
            elif _all_digits(<bytes>request_id):  # the usual id: nothing in it to escape
                _put(&out, b'"', 1)
                _put_bytes(&out, <bytes>request_id)
                _put(&out, b'"', 1)
            else:
                _put_bytes(&out, <bytes>json_string((<bytes>request_id).decode("latin-1")))
            if line[10] is not None or line[11] is not None:
                _put_bytes(&out, <bytes>more(line[10], line[11]))
            _put(&out, b"}\n", 2)
        return PyBytes_FromStringAndSize(out.data, out.size)
    finally:
        PyMem_Free(out.data)


# -- OTLP spans (proxy.tracing): the same bytes as the twin's encode_otlp_spans ----------

cdef struct Buf:
    unsigned char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef int buf_reserve(Buf* b, Py_ssize_t more) except -1:
    cdef Py_ssize_t cap
    cdef unsigned char* grown
    if b.size + more <= b.cap:
        return 0
    cap = max(b.cap * 2, b.size + more, 256)
    grown = <unsigned char*>PyMem_Realloc(b.data, cap)
    if grown is NULL:
        raise MemoryError()
    b.data = grown
    b.cap = cap
    return 0


cdef inline int varint_size(unsigned long long value) noexcept:
    cdef int n = 1
    while value > 0x7F:
        value >>= 7
        n += 1
    return n


cdef inline void put_varint(Buf* b, unsigned long long value) noexcept:
    # The caller reserved room (10 bytes at most).
    while value > 0x7F:
        b.data[b.size] = <unsigned char>((value & 0x7F) | 0x80)
        b.size += 1
        value >>= 7
    b.data[b.size] = <unsigned char>value
    b.size += 1


cdef int put_field(Buf* b, unsigned char tag, const char* data, Py_ssize_t size) except -1:
    """A length-delimited field: tag, length, bytes."""
    buf_reserve(b, 11 + size)
    b.data[b.size] = tag
    b.size += 1
    put_varint(b, <unsigned long long>size)
    memcpy(b.data + b.size, data, size)
    b.size += size
    return 0


cdef int put_fixed64(Buf* b, unsigned char tag, unsigned long long value) except -1:
    cdef int i
    buf_reserve(b, 9)
    b.data[b.size] = tag
    for i in range(8):
        b.data[b.size + 1 + i] = <unsigned char>((value >> (8 * i)) & 0xFF)
    b.size += 9
    return 0


cdef const char* utf8(object text, Py_ssize_t* size, list keep) except NULL:
    """`text` as UTF-8 (lone surrogates replaced, as the twin does; such an encoding is
    kept alive in `keep`)."""
    cdef const char* data
    try:
        return PyUnicode_AsUTF8AndSize(text, size)
    except UnicodeEncodeError:
        encoded = (<str>text).encode("utf-8", "replace")
        keep.append(encoded)
        size[0] = PyBytes_GET_SIZE(encoded)
        return PyBytes_AS_STRING(encoded)


cdef int put_attribute(Buf* b, object key, object value, list keep) except -1:
    """One span attribute: a KeyValue (field 9) with its AnyValue."""
    cdef Py_ssize_t key_size, text_size = 0, any_size, pair_size
    cdef const char* key_data = utf8(key, &key_size, keep)
    cdef const char* text = NULL
    cdef unsigned long long number = 0
    cdef double real = 0.0
    cdef int kind
    cdef int i
    if type(value) is str:
        kind = 1
        text = utf8(value, &text_size, keep)
        any_size = 1 + varint_size(text_size) + text_size
    elif value is True or value is False:
        kind = 2
        any_size = 2
    elif type(value) is int:
        kind = 3
        number = <unsigned long long>(<long long>value)
        any_size = 1 + varint_size(number)
    elif type(value) is float:
        kind = 4
        real = value
        any_size = 9
    else:
        kind = 1
        value = str(value)
        keep.append(value)
        text = utf8(value, &text_size, keep)
        any_size = 1 + varint_size(text_size) + text_size
    pair_size = 1 + varint_size(key_size) + key_size + 1 + varint_size(any_size) + any_size
    buf_reserve(b, 1 + varint_size(pair_size) + pair_size)
    b.data[b.size] = 0x4A
    b.size += 1
    put_varint(b, pair_size)
    b.data[b.size] = 0x0A
    b.size += 1
    put_varint(b, key_size)
    memcpy(b.data + b.size, key_data, key_size)
    b.size += key_size
    b.data[b.size] = 0x12
    b.size += 1
    put_varint(b, any_size)
    if kind == 1:
        b.data[b.size] = 0x0A
        b.size += 1
        put_varint(b, text_size)
        memcpy(b.data + b.size, text, text_size)
        b.size += text_size
    elif kind == 2:
        b.data[b.size] = 0x10
        b.data[b.size + 1] = 1 if value is True else 0
        b.size += 2
    elif kind == 3:
        b.data[b.size] = 0x18
        b.size += 1
        put_varint(b, number)
    else:
        b.data[b.size] = 0x21
        memcpy(b.data + b.size + 1, &real, 8)  # little-endian, as x86 and arm64 are
        b.size += 9
    return 0


cdef str A_SESSION = "mcp.session.id"
cdef str A_REQUEST_ID = "jsonrpc.request.id"
cdef str A_STATUS = "http.response.status_code"
cdef str A_ERROR = "error.type"


cdef int put_span(Buf* b, tuple span, list keep) except -1:
    cdef Py_ssize_t size
    cdef const char* text
    cdef bytes trace_id = span[0]
    cdef bytes span_id = span[1]
    cdef bytes parent_id = span[2]
    cdef bytes fixed = span[8]
    cdef object error = span[12]
    put_field(b, 0x0A, PyBytes_AS_STRING(trace_id), PyBytes_GET_SIZE(trace_id))
    put_field(b, 0x12, PyBytes_AS_STRING(span_id), PyBytes_GET_SIZE(span_id))
    if span[3]:
        text = utf8(span[3], &size, keep)
        put_field(b, 0x1A, text, size)
    if PyBytes_GET_SIZE(parent_id):
        put_field(b, 0x22, PyBytes_AS_STRING(parent_id), PyBytes_GET_SIZE(parent_id))
    text = utf8(span[4], &size, keep)
    put_field(b, 0x2A, text, size)
    buf_reserve(b, 11)
    b.data[b.size] = 0x30
    b.size += 1
    put_varint(b, <unsigned long long>(<long long>span[5]))
    put_fixed64(b, 0x39, <unsigned long long>span[6])
    put_fixed64(b, 0x41, <unsigned long long>span[7])
    buf_reserve(b, PyBytes_GET_SIZE(fixed))
    memcpy(b.data + b.size, PyBytes_AS_STRING(fixed), PyBytes_GET_SIZE(fixed))
    b.size += PyBytes_GET_SIZE(fixed)
    if span[9] is not None:
        put_attribute(b, A_SESSION, span[9], keep)
    if span[10] is not None:
        put_attribute(b, A_REQUEST_ID, span[10], keep)
    if span[11]:
        put_attribute(b, A_STATUS, span[11], keep)
    if error is not None:
        put_attribute(b, A_ERROR, error, keep)
        put_field(b, 0x7A, b"\x18\x02", 2)  # status: {code: STATUS_CODE_ERROR}
    return 0


def encode_otlp_attributes(dict attributes):
    """`attributes` as a span's attribute fields (see the twin)."""
    cdef Buf b
    cdef list keep = []
    b.data = NULL
    b.size = b.cap = 0
    try:
        for key, value in attributes.items():
            put_attribute(&b, key, value, keep)
        return PyBytes_FromStringAndSize(<const char*>b.data, b.size)
    finally:
        PyMem_Free(b.data)


def encode_otlp_spans(list spans, bytes resource, bytes scope):
    """An OTLP ``ExportTraceServiceRequest`` (protobuf) of `spans`, all of one resource
    and one instrumentation scope (see the twin)."""
    cdef Buf body
    cdef Buf span_buf
    cdef Buf out
    cdef list keep = []
    cdef Py_ssize_t scope_spans, resource_spans, total
    body.data = NULL
    body.size = body.cap = 0
    span_buf.data = NULL
    span_buf.size = span_buf.cap = 0
    out.data = NULL
    out.size = out.cap = 0
    try:
        for span in spans:
            span_buf.size = 0
            put_span(&span_buf, <tuple?>span, keep)
            put_field(&body, 0x12, <const char*>span_buf.data, span_buf.size)
            if len(keep) > 64:
                keep.clear()  # what the span borrowed has been copied
        scope_spans = 1 + varint_size(len(scope)) + len(scope) + body.size
        resource_spans = (
            1 + varint_size(len(resource)) + len(resource)
            + 1 + varint_size(scope_spans) + scope_spans
        )
        total = 1 + varint_size(resource_spans) + resource_spans
        buf_reserve(&out, total)
        out.data[0] = 0x0A
        out.size = 1
        put_varint(&out, resource_spans)
        put_field(&out, 0x0A, PyBytes_AS_STRING(resource), len(resource))
        out.data[out.size] = 0x12
        out.size += 1
        put_varint(&out, scope_spans)
        put_field(&out, 0x0A, PyBytes_AS_STRING(scope), len(scope))
        if body.size:
            memcpy(out.data + out.size, body.data, body.size)
            out.size += body.size
        return PyBytes_FromStringAndSize(<const char*>out.data, out.size)
    finally:
        PyMem_Free(body.data)
        PyMem_Free(span_buf.data)
        PyMem_Free(out.data)


# -- spans (proxy.tracing): what the twin's TraceSpan and Spans do ---------------------------

from libc.stdint cimport uint64_t
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

import os as _os

cdef enum:
    SERVER = 2
    CLIENT = 3

cdef uint64_t rng_state[2]
cdef const char* HEX = b"0123456789abcdef"
cdef bytes B_TRACEPARENT = b"traceparent"
cdef bytes B_TRACESTATE = b"tracestate"


def _seed():
    """New random state (at import, and in a child after fork: never the parent's ids)."""
    global rng_state
    seed = _os.urandom(16)
    rng_state[0] = int.from_bytes(seed[:8], "little") | 1
    rng_state[1] = int.from_bytes(seed[8:], "little") | 2


_seed()
_os.register_at_fork(after_in_child=_seed)


cdef inline uint64_t next_random() noexcept:
    # xorshift128+: ids only need to be unique and unpredictable enough to sample by.
    cdef uint64_t s1 = rng_state[0]
    cdef uint64_t s0 = rng_state[1]
    rng_state[0] = s0
    s1 ^= s1 << 23
    rng_state[1] = s1 ^ s0 ^ (s1 >> 18) ^ (s0 >> 5)
    return rng_state[1] + s0


cdef inline void big_endian(unsigned char* out, uint64_t value) noexcept:
    cdef int i
    for i in range(8):
        out[7 - i] = <unsigned char>(value & 0xFF)
        value >>= 8


cdef inline long long now_ns() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef bytes hex_of(const unsigned char* data, Py_ssize_t size):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size * 2)
    cdef char* p = PyBytes_AS_STRING(out)
    cdef Py_ssize_t i
    for i in range(size):
        p[2 * i] = HEX[data[i] >> 4]
        p[2 * i + 1] = HEX[data[i] & 15]
    return out


cdef inline int hex_digit(unsigned char c) noexcept:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    return -1


cdef bint all_hex(const unsigned char* p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if hex_digit(p[i]) < 0:
            return False
    return True


cdef bint all_zero(const unsigned char* p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if p[i] != 48:
            return False
    return True


def parse_traceparent(bytes value):
    """(trace id in hex, parent span id, sampled) of a W3C ``traceparent``, or None
    (see the twin)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
    cdef Py_ssize_t i
    cdef unsigned char parent[8]
    while n and (p[0] == 32 or p[0] == 9):
        p += 1
        n -= 1
    while n and (p[n - 1] == 32 or p[n - 1] == 9):
        n -= 1
    if n < 55 or p[2] != 45 or p[35] != 45 or p[52] != 45:
        return None
    if not (all_hex(p, 2) and all_hex(p + 3, 32) and all_hex(p + 36, 16) and all_hex(p + 53, 2)):
        return None
    if p[0] == 102 and p[1] == 102:  # ff
        return None
    if n > 55 and (p[55] != 45 or (p[0] == 48 and p[1] == 48)):
        return None
    if all_zero(p + 3, 32) or all_zero(p + 36, 16):
        return None
    for i in range(8):
        parent[i] = <unsigned char>(hex_digit(p[36 + 2 * i]) * 16 + hex_digit(p[37 + 2 * i]))
    return (
        PyBytes_FromStringAndSize(<const char*>p + 3, 32),
        PyBytes_FromStringAndSize(<const char*>parent, 8),
        (hex_digit(p[54]) & 1) == 1,
    )


cdef inline bint named_as(object name, bytes wanted) noexcept:
    return (
        type(name) is bytes
        and PyBytes_GET_SIZE(name) == PyBytes_GET_SIZE(wanted)
        and memcmp(PyBytes_AS_STRING(name), PyBytes_AS_STRING(wanted), PyBytes_GET_SIZE(wanted)) == 0
    )


@cython.auto_pickle(False)
cdef class TraceSpan:
    """One span of the gateway's (see the twin)."""

    cdef readonly Spans spans
    cdef readonly int kind
    cdef readonly bytes trace_id
    cdef readonly bytes trace_hex
    cdef readonly bytes span_id
    cdef readonly bytes parent_id
    cdef readonly str trace_state
    cdef readonly bint sampled
    cdef readonly long long start
    cdef public object env
    cdef public object hdrs
    cdef public str method
    cdef public object client
    cdef public str backend
    cdef public object replica
    cdef public int status
    cdef public object error

    def traceparent(self):
        """This span as the W3C ``traceparent`` of a request it makes."""
        cdef bytes out = PyBytes_FromStringAndSize(NULL, 55)
        cdef char* p = PyBytes_AS_STRING(out)
        cdef const unsigned char* span_id = <const unsigned char*>PyBytes_AS_STRING(self.span_id)
        cdef int i
        memcpy(p, b"00-", 3)
        memcpy(p + 3, PyBytes_AS_STRING(self.trace_hex), 32)
        p[35] = 45
        for i in range(8):
            p[36 + 2 * i] = HEX[span_id[i] >> 4]
            p[37 + 2 * i] = HEX[span_id[i] & 15]
        memcpy(p + 52, b"-01" if self.sampled else b"-00", 3)
        return out

    def end(self):
        """Done: a sampled span is queued for export."""
        if self.sampled:
            self.spans.finish(self)


cdef TraceSpan new_span(
    Spans spans, int kind, bytes trace_id, bytes trace_hex, bytes span_id, bytes parent_id,
    str trace_state, bint sampled,
):
    cdef TraceSpan span = TraceSpan.__new__(TraceSpan)
    span.spans = spans
    span.kind = kind
    span.trace_id = trace_id
    span.trace_hex = trace_hex
    span.span_id = span_id
    span.parent_id = parent_id
    span.trace_state = trace_state
    span.sampled = sampled
    span.env = None
    span.hdrs = None
    span.method = ""
    span.client = None
    span.backend = ""
    span.replica = None
    span.status = 0
    span.error = None
    span.start = now_ns()
    return span


@cython.auto_pickle(False)
cdef class Spans:
    """The spans of one process (see the twin)."""

    cdef readonly list waiting
    cdef Py_ssize_t batch
    cdef Py_ssize_t max_queue
    cdef object wake
    cdef list dropped
    cdef dict shared
    cdef object share
    cdef object fingerprint
    cdef bint sample_all
    cdef uint64_t bound

    def __init__(
        self, list waiting, Py_ssize_t batch, Py_ssize_t max_queue, object wake, list dropped,
        dict shared, object share, object fingerprint, double ratio,
    ):
        self.waiting = waiting
        self.batch = batch
        self.max_queue = max_queue
        self.wake = wake
        self.dropped = dropped
        self.shared = shared
        self.share = share
        self.fingerprint = fingerprint
        self.sample_all = ratio >= 1.0
        self.bound = min(round(ratio * (1 << 64)), (1 << 64) - 1)

    def server_span(self, scope):
        """A request's span, a child of the client's trace when it sent one."""
        cdef object parent = None
        cdef object state = None
        cdef tuple item
        cdef unsigned char ids[24]
        cdef uint64_t low
        cdef bint sampled
        cdef bytes trace_id, trace_hex, parent_id
        cdef str trace_state
        for item in scope["headers"]:
            name = item[0]
            if named_as(name, B_TRACEPARENT):
                parent = item[1]
            elif named_as(name, B_TRACESTATE):
                state = item[1] if state is None else state + b"," + item[1]
        big_endian(ids, next_random())
        big_endian(ids + 8, next_random())
        low = next_random()
        big_endian(ids + 16, low)
        parsed = None if parent is None else parse_traceparent(parent)
        if parsed is not None:
            trace_hex = (<tuple>parsed)[0]
            parent_id = (<tuple>parsed)[1]
            sampled = (<tuple>parsed)[2]
            trace_id = bytes.fromhex(trace_hex.decode())
            trace_state = "" if state is None else state.decode("latin-1")
        else:
            trace_id = PyBytes_FromStringAndSize(<const char*>ids + 8, 16)
            trace_hex = hex_of(ids + 8, 16)
            parent_id = b""
            trace_state = ""
            sampled = self.sample_all or low < self.bound
        cdef TraceSpan span = new_span(
            self, SERVER, trace_id, trace_hex, PyBytes_FromStringAndSize(<const char*>ids, 8),
            parent_id, trace_state, sampled,
        )
        span.method = scope["method"]
        client = scope.get("client")
        if client:
            span.client = client[0]
        return span

    @staticmethod
    def named(TraceSpan span, env, hdrs):
        """The request's envelope, once read (the span is named after it)."""
        span.env = env
        span.hdrs = hdrs

    @staticmethod
    def ended(TraceSpan span, int status, error, hdrs):
        """The request was answered with `status` (see the twin)."""
        span.status = status
        span.hdrs = hdrs
        if error is not None:
            span.error = error
        elif status >= 500:
            span.error = str(status)
        if span.sampled:
            span.spans.finish(span)

    @staticmethod
    def adopt(TraceSpan span, bytes traceparent, tracestate):
        """The trace context a client put in the request's ``params._meta`` (see the
        twin)."""
        if PyBytes_GET_SIZE(span.parent_id):
            return
        parsed = parse_traceparent(traceparent)
        if parsed is None:
            return
        span.trace_hex = (<tuple>parsed)[0]
        span.parent_id = (<tuple>parsed)[1]
        span.sampled = (<tuple>parsed)[2]
        span.trace_id = bytes.fromhex(span.trace_hex.decode())
        span.trace_state = "" if tracestate is None else (<bytes>tracestate).decode("latin-1")

    def client_span(self, TraceSpan parent, env, replica, str backend):
        """A span for one upstream exchange under `parent`, and the trace headers that
        carry it to the upstream."""
        cdef unsigned char ids[8]
        big_endian(ids, next_random())
        cdef TraceSpan span = new_span(
            self, CLIENT, parent.trace_id, parent.trace_hex,
            PyBytes_FromStringAndSize(<const char*>ids, 8), parent.span_id,
            parent.trace_state, parent.sampled,
        )
        span.env = env
        span.backend = backend
        span.replica = replica
        carried = [(B_TRACEPARENT, span.traceparent())]
        if span.trace_state:
            carried.append((B_TRACESTATE, span.trace_state.encode("latin-1")))
        return span, carried

    @staticmethod
    def reached(TraceSpan span, replica, int status):
        """The replica an exchange went to, and the status it answered with."""
        span.replica = replica
        span.status = status

    def finish(self, TraceSpan span):
        """Queue an ended, sampled span for export (see the twin)."""
        env = span.env
        hdrs = span.hdrs
        session = None
        request_id = None
        cdef tuple key
        if span.kind == SERVER:
            if env is None:
                key = (SERVER, span.method, span.client)
            else:
                version = env.protocol_version or (None if hdrs is None else hdrs.protocol_version)
                key = (SERVER, env.kind, env.method, env.name, env.uri, version, span.client)
            if hdrs is not None:
                session_id = hdrs.session_id
                if session_id is not None:
                    session = self.fingerprint(session_id)
        elif env is None:
            key = (CLIENT, span.backend, None, span.replica)
        else:
            key = (CLIENT, span.backend, env.method, env.name or env.uri, span.replica)
        if env is not None:
            raw_id = env.id
            if raw_id is not None:
                request_id = (<bytes>raw_id).decode("latin-1")
        shared = self.shared.get(key)
        if shared is None:
            shared = self.share(key, span)
        cdef list waiting = self.waiting
        if len(waiting) >= self.max_queue:
            self.dropped[0] += 1
            return
        waiting.append(
            (
                span.trace_id,
                span.span_id,
                span.parent_id,
                span.trace_state,
                (<tuple>shared)[0],
                span.kind,
                span.start,
                now_ns(),
                (<tuple>shared)[1],
                session,
                request_id,
                span.status,
                span.error,
            )
        )
        if len(waiting) == self.batch:
            self.wake()


# -- tool errors ---------------------------------------------------------------------------

cdef bytes B_IS_ERROR = b'"isError"'
cdef Py_ssize_t OVERLAP = 32  # bytes of a body kept to find the words across two chunks


cdef inline Py_ssize_t skip_blanks(const char* p, Py_ssize_t i, Py_ssize_t n) noexcept:
    while i < n and (p[i] == 32 or p[i] == 9 or p[i] == 13 or p[i] == 10):
        i += 1
    return i


cdef bint is_error(bytes data) noexcept:
    """The first "isError" key of `data` says true (spaces allowed around the colon)."""
    cdef const char* p = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef const char* found = <const char*>memmem(p, n, PyBytes_AS_STRING(B_IS_ERROR), 9)
    if found == NULL:
        return False
    cdef Py_ssize_t i = skip_blanks(p, (found - p) + 9, n)
    if i >= n or p[i] != 58:  # ':'
        return False
    i = skip_blanks(p, i + 1, n)
    return i + 4 <= n and memcmp(p + i, b"true", 4) == 0


@cython.final
@cython.auto_pickle(False)
cdef class ToolErrors:
    """An ASGI send that marks a sampled tools/call span as a tool error (see the twin)."""

    cdef readonly object send
    cdef readonly TraceSpan span
    cdef readonly bytes tail

    def __init__(self, send, TraceSpan span):
        self.send = send
        self.span = span
        self.tail = b""

    def __call__(self, message):
        cdef bytes body
        cdef Py_ssize_t n
        if self.span.error is None and message["type"] == "http.response.body":
            body = message.get("body", b"")
            n = PyBytes_GET_SIZE(body)
            if n and (
                is_error(body)
                or (PyBytes_GET_SIZE(self.tail) and is_error(self.tail + body[:OVERLAP]))
            ):
                self.span.error = "tool_error"
            self.tail = body[n - OVERLAP:] if n > OVERLAP else body
        return self.send(message)



# -- upstream responses taken whole (see the twin's scan_response) ------------------------------

cdef unsigned char TOKEN_BYTE[256]  # tchar (RFC 9110 §5.6.2)
cdef unsigned char TEXT_BYTE[256]  # a reason phrase's or field value's: HTAB, SP, VCHAR
cdef int _b
for _b in range(256):
    TEXT_BYTE[_b] = _b == 9 or 0x20 <= _b <= 0x7E
    TOKEN_BYTE[_b] = (
        (0x30 <= _b <= 0x39) or (0x41 <= _b <= 0x5A) or (0x61 <= _b <= 0x7A)
        or _b in b"!#$%&'*+-.^_`|~"
    )


cdef inline bint same_lower(const unsigned char* p, Py_ssize_t size, const char* lower,
                            Py_ssize_t lower_size) noexcept:
    """`p[:size]`, ASCII case folded, is `lower`."""
    cdef Py_ssize_t i
    if size != lower_size:
        return False
    for i in range(size):
        if (p[i] | 0x20 if 0x41 <= p[i] <= 0x5A else p[i]) != <unsigned char>lower[i]:
            return False
    return True


cdef bytes lowered(const unsigned char* p, Py_ssize_t size):
    cdef bytes out = PyBytes_FromStringAndSize(<const char*>p, size)
    cdef unsigned char* q = <unsigned char*>PyBytes_AS_STRING(out)
    cdef Py_ssize_t i
    for i in range(size):
        if 0x41 <= q[i] <= 0x5A:
            q[i] |= 0x20
    return out


def scan_response(bytes data not None, Py_ssize_t limit):
    """A whole, plainly framed upstream response in `data`: (status, header fields, keep
    the connection, where the body starts); None for anything else (see the twin)."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos, name_start, name_end, value_start, value_end, i
    cdef long long length = -1
    cdef bint keep_alive = True
    cdef int status
    cdef list headers
    if n < 13 or memcmp(s, b"HTTP/1.1 ", 9) != 0:
        return None
    for i in range(9, 12):
        if not 0x30 <= s[i] <= 0x39:
            return None
    status = (s[9] - 0x30) * 100 + (s[10] - 0x30) * 10 + (s[11] - 0x30)
    if status < 200 or status > 599 or status == 204 or status == 304 or s[12] != 0x20:
        return None
    pos = 13
    while pos < n and TEXT_BYTE[s[pos]]:
        pos += 1
    if pos + 1 >= n or s[pos] != 0x0D or s[pos + 1] != 0x0A:
        return None
    pos += 2
    headers = []
    while not (pos + 1 < n and s[pos] == 0x0D and s[pos + 1] == 0x0A):
        name_start = pos
        while pos < n and TOKEN_BYTE[s[pos]]:
            pos += 1
        if pos == name_start or pos >= n or s[pos] != 0x3A:
            return None
        name_end = pos
        pos += 1
        while pos < n and (s[pos] == 0x20 or s[pos] == 0x09):
            pos += 1
        value_start = pos
        while pos < n and TEXT_BYTE[s[pos]]:
            pos += 1
        if pos + 1 >= n or s[pos] != 0x0D or s[pos + 1] != 0x0A:
            return None
        value_end = pos
        while value_end > value_start and (s[value_end - 1] == 0x20 or s[value_end - 1] == 0x09):
            value_end -= 1
        pos += 2
        if same_lower(s + name_start, name_end - name_start, b"content-length", 14):
            if length >= 0 or value_end == value_start or value_end - value_start > 15:
                return None
            length = 0
            for i in range(value_start, value_end):
                if not 0x30 <= s[i] <= 0x39:
                    return None
                length = length * 10 + (s[i] - 0x30)
        elif same_lower(s + name_start, name_end - name_start, b"transfer-encoding", 17):
            return None
        elif same_lower(s + name_start, name_end - name_start, b"connection", 10):
            if not same_lower(s + value_start, value_end - value_start, b"keep-alive", 10):
                keep_alive = False
        headers.append((
            lowered(s + name_start, name_end - name_start),
            PyBytes_FromStringAndSize(<const char*>s + value_start, value_end - value_start),
        ))
    pos += 2
    if pos > limit or length < 0 or n - pos != length:
        return None
    return status, headers, keep_alive, pos



# -- upstream request heads (see the twin's write_head) ---------------------------------------

cdef unsigned char BREAKS_LINE[256]  # CR, LF, NUL: never inside a request line or field
for _b in range(256):
    BREAKS_LINE[_b] = _b == 0 or _b == 0x0A or _b == 0x0D


cdef inline char* put(char* out, bytes part) except NULL:
    """Copy `part` to `out`; HeadInjection when it holds CR, LF or NUL."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(part)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(part)
    for i in range(n):
        if BREAKS_LINE[p[i]]:
            raise HeadInjection("a request header holds CR, LF or NUL")
    memcpy(out, p, n)
    return out + n


def write_head(bytes method not None, bytes target not None, headers):
    """``METHOD target HTTP/1.1``, one ``name: value`` line per header, and the blank
    line; raises HeadInjection when any part holds CR, LF or NUL."""
    cdef list fields = headers if type(headers) is list else list(headers)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(method) + PyBytes_GET_SIZE(target) + 14
    cdef bytes name, value
    for name, value in fields:
        size += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4
    cdef bytes head = PyBytes_FromStringAndSize(NULL, size)
    cdef char* out = PyBytes_AS_STRING(head)
    out = put(out, method)
    out[0] = 0x20
    out = put(out + 1, target)
    memcpy(out, b" HTTP/1.1\r\n", 11)
    out += 11
    for name, value in fields:
        out = put(out, name)
        out[0] = 0x3A
        out[1] = 0x20
        out = put(out + 2, value)
        out[0] = 0x0D
        out[1] = 0x0A
        out += 2
    out[0] = 0x0D
    out[1] = 0x0A
    return head
