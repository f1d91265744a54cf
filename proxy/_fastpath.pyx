# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Compiled fast path: reads JSON-RPC envelopes and MCP headers from raw bytes."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memcmp

cdef extern from *:
    """
    #include <string.h>
    #if defined(__SSE2__) || defined(_M_X64) || defined(_M_AMD64)
    #include <emmintrin.h>
    #define FP_SSE2 1
    #endif

    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && defined(FP_SSE2)
    #include <immintrin.h>
    #define FP_AVX2 1
    static int fp_avx2 = 0;  /* set once at import */

    /* The AVX2 loop for long strings: same result as the SSE2 one below. */
    __attribute__((target("avx2"))) static Py_ssize_t
    fp_string_run_avx2(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n) {
        const __m256i quote = _mm256_set1_epi8(0x22), bslash = _mm256_set1_epi8(0x5C);
        const __m256i space = _mm256_set1_epi8(0x20);
        while (pos + 32 <= n) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(s + pos));
            __m256i hit = _mm256_or_si256(
                _mm256_or_si256(_mm256_cmpeq_epi8(v, quote), _mm256_cmpeq_epi8(v, bslash)),
                _mm256_cmpgt_epi8(space, v));
            unsigned int mask = (unsigned int)_mm256_movemask_epi8(hit);
            if (mask)
                return pos + __builtin_ctz(mask);
            pos += 32;
        }
        return pos;
    }
    static void fp_init(void) { fp_avx2 = __builtin_cpu_supports("avx2"); }
    #else
    static void fp_init(void) {}
    #endif

    /* First byte at or after pos that a JSON string cannot hold as is: '"', '\\',
       a control character, or a non-ASCII byte. s[n] is NUL, so the scan stops there. */
    static inline Py_ssize_t fp_string_run(const unsigned char *s, Py_ssize_t pos,
                                           Py_ssize_t n) {
    #ifdef FP_SSE2
        const __m128i quote = _mm_set1_epi8(0x22), bslash = _mm_set1_epi8(0x5C);
        const __m128i space = _mm_set1_epi8(0x20);
        int first = 1;
        while (pos + 16 <= n) {
            __m128i v = _mm_loadu_si128((const __m128i *)(s + pos));
            /* signed compare: bytes >= 0x80 are negative, so they count as < 0x20 */
            __m128i hit = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
                _mm_cmplt_epi8(v, space));
            unsigned int mask = (unsigned int)_mm_movemask_epi8(hit);
            if (mask) {
    #if defined(_MSC_VER) && !defined(__clang__)
                unsigned long bit;
                _BitScanForward(&bit, mask);
                return pos + (Py_ssize_t)bit;
    #else
                return pos + __builtin_ctz(mask);
    #endif
            }
            pos += 16;
    #ifdef FP_AVX2
            if (first && fp_avx2) {  /* a long string: go wide */
                pos = fp_string_run_avx2(s, pos, n);
                if (pos + 32 <= n)
                    return pos;  /* found the end of the run */
            }
            first = 0;
    #else
            (void)first;
    #endif
        }
    #else
        const unsigned long long ones = 0x0101010101010101ULL;
        const unsigned long long highs = 0x8080808080808080ULL;
        while (pos + 8 <= n) {
            unsigned long long w, q, b;
            memcpy(&w, s + pos, 8);
            q = w ^ (ones * 0x22);
            b = w ^ (ones * 0x5C);
            if ((((q - ones) & ~q) | ((b - ones) & ~b) | (w - ones * 0x20) | w) & highs)
                break;
            pos += 8;
        }
    #endif
        while (s[pos] >= 0x20 && s[pos] < 0x80 && s[pos] != 0x22 && s[pos] != 0x5C)
            pos++;
        return pos;
    }
    """
    Py_ssize_t fp_string_run(const unsigned char* s, Py_ssize_t pos, Py_ssize_t n) noexcept
    void fp_init() noexcept

fp_init()


from proxy.headers import (
    ACCEPT as _ACCEPT,
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

__all__ = ("scan_envelope", "scan_headers")

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
cdef bytes ACCEPT = _ACCEPT
cdef bytes CONTENT_LENGTH = _CONTENT_LENGTH

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
# Smallest integer that rounds to infinity as a double (half-way to 2**1024, ties to even).
cdef bytes INF_EDGE = str(2**1024 - 2**970).encode()

cdef long long EXP_CAP = 1000000000000000  # exponents saturate here

cdef enum:
    MAX_DEPTH = 1024     # deepest accepted nesting; the top-level container counts as 1
    MAX_EXP10 = 308      # decimal exponent of INF_EDGE's leading digit
    KEY_BUF = 256        # escaped keys longer than this match nothing we read

# Value types, from the first character of a value.
cdef enum:
    T_ABSENT = 0
    T_STRING = 1
    T_NUMBER = 2
    T_OTHER = 3

# Parse error reasons.
cdef enum:
    E_SYNTAX = 1
    E_DEPTH = 2
    E_RANGE = 3

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

cdef struct Scan:
    const unsigned char* s   # the body; s[n] is the NUL every bytes object ends with
    Py_ssize_t n
    Py_ssize_t err_pos
    int err

# Byte classes.
cdef unsigned char HEX[256]            # hex digit value + 1, 0 if not a hex digit
cdef int _i
for _i in range(256):
    HEX[_i] = 0
for _i in range(10):
    HEX[0x30 + _i] = _i + 1
for _i in range(6):
    HEX[0x41 + _i] = _i + 11
    HEX[0x61 + _i] = _i + 11


cdef inline Py_ssize_t fail(Scan* sc, Py_ssize_t pos, int err) noexcept:
    if not sc.err:
        sc.err = err
        sc.err_pos = pos
    return -1


cdef inline Py_ssize_t skip_ws(const unsigned char* s, Py_ssize_t pos) noexcept:
    while s[pos] <= 0x20 and (s[pos] == 0x20 or s[pos] == 0x0A or s[pos] == 0x0D
                              or s[pos] == 0x09):
        pos += 1
    return pos


cdef inline unsigned int hex4(const unsigned char* p) noexcept:
    """The value of 4 validated hex digits."""
    return ((HEX[p[0]] - 1) << 12 | (HEX[p[1]] - 1) << 8 | (HEX[p[2]] - 1) << 4
            | (HEX[p[3]] - 1))


cdef Py_ssize_t scan_special(Scan* sc, Py_ssize_t pos) noexcept:
    """Validate the escape or UTF-8 sequence at ``pos`` inside a string; return what follows."""
    cdef const unsigned char* s = sc.s
    cdef unsigned char c = s[pos]
    cdef unsigned char c1 = s[pos + 1]
    cdef unsigned int u, v
    if c == 0x5C:
        if c1 == 0x75:  # \uXXXX
            if not (HEX[s[pos + 2]] and HEX[s[pos + 3]] and HEX[s[pos + 4]] and HEX[s[pos + 5]]):
                return fail(sc, pos, E_SYNTAX)
            u = hex4(s + pos + 2)
            if 0xD800 <= u <= 0xDBFF:  # must be followed by a low surrogate escape
                pos += 6
                if s[pos] != 0x5C or s[pos + 1] != 0x75:
                    return fail(sc, pos, E_SYNTAX)
                if not (HEX[s[pos + 2]] and HEX[s[pos + 3]] and HEX[s[pos + 4]]
                        and HEX[s[pos + 5]]):
                    return fail(sc, pos, E_SYNTAX)
                v = hex4(s + pos + 2)
                if not 0xDC00 <= v <= 0xDFFF:
                    return fail(sc, pos, E_SYNTAX)
            elif 0xDC00 <= u <= 0xDFFF:
                return fail(sc, pos, E_SYNTAX)
            return pos + 6
        if (c1 == 0x22 or c1 == 0x5C or c1 == 0x2F or c1 == 0x62 or c1 == 0x66
                or c1 == 0x6E or c1 == 0x72 or c1 == 0x74):
            return pos + 2
        return fail(sc, pos, E_SYNTAX)
    if c < 0x80:  # a control character, or the NUL past the end
        return fail(sc, pos, E_SYNTAX)
    # strict UTF-8 (Unicode table 3-7)
    if 0xC2 <= c <= 0xDF:
        if 0x80 <= c1 <= 0xBF:
            return pos + 2
        return fail(sc, pos, E_SYNTAX)
    if 0xE0 <= c <= 0xEF:
        if c == 0xE0:
            if not 0xA0 <= c1 <= 0xBF:
                return fail(sc, pos, E_SYNTAX)
        elif c == 0xED:
            if not 0x80 <= c1 <= 0x9F:
                return fail(sc, pos, E_SYNTAX)
        elif not 0x80 <= c1 <= 0xBF:
            return fail(sc, pos, E_SYNTAX)
        if 0x80 <= s[pos + 2] <= 0xBF:
            return pos + 3
        return fail(sc, pos, E_SYNTAX)
    if 0xF0 <= c <= 0xF4:
        if c == 0xF0:
            if not 0x90 <= c1 <= 0xBF:
                return fail(sc, pos, E_SYNTAX)
        elif c == 0xF4:
            if not 0x80 <= c1 <= 0x8F:
                return fail(sc, pos, E_SYNTAX)
        elif not 0x80 <= c1 <= 0xBF:
            return fail(sc, pos, E_SYNTAX)
        if 0x80 <= s[pos + 2] <= 0xBF and 0x80 <= s[pos + 3] <= 0xBF:
            return pos + 4
    return fail(sc, pos, E_SYNTAX)


cdef inline Py_ssize_t scan_string(Scan* sc, Py_ssize_t pos, Span* out) noexcept:
    """Validate the string whose opening quote is at ``pos``; return the offset after it."""
    cdef const unsigned char* s = sc.s
    cdef bint escaped = False
    pos += 1
    out.start = pos
    while True:
        pos = fp_string_run(s, pos, sc.n)
        if s[pos] == 0x22:
            break
        if s[pos] == 0x5C:
            escaped = True
        pos = scan_special(sc, pos)
        if pos < 0:
            return -1
    out.end = pos
    out.kind = T_STRING
    out.escaped = escaped
    return pos + 1


cdef bint beyond_double(const unsigned char* s, Py_ssize_t start, Py_ssize_t end) noexcept:
    """For a number whose leading digit is at 10**308: does it round to infinity?"""
    cdef const unsigned char* edge = INF_EDGE
    cdef Py_ssize_t k = 0, m = len(INF_EDGE)
    cdef unsigned char c
    cdef bint leading = True
    while start < end:
        c = s[start]
        start += 1
        if c == 0x2E or c == 0x2D:  # '.', '-'
            continue
        if c == 0x65 or c == 0x45:  # 'e', 'E'
            break
        if leading and c == 0x30:
            continue
        leading = False
        if k == m:  # equal so far, and any further digit only adds
            return True
        if c != edge[k]:
            return c > edge[k]
        k += 1
    while k < m:  # the number's digits ran out: it is below the edge unless the rest is 0
        if edge[k] != 0x30:
            return False
        k += 1
    return True  # exactly the edge, which rounds (ties to even) up to infinity


cdef Py_ssize_t scan_number_full(Scan* sc, Py_ssize_t pos) noexcept:
    """scan_number for fractions, exponents and long integers (which may overflow)."""
    cdef const unsigned char* s = sc.s
    cdef Py_ssize_t start = pos, first = -1, point = -1, lead
    cdef long long exp = 0
    cdef bint negexp = False
    if s[pos] == 0x2D:
        pos += 1
    if s[pos] == 0x30:
        pos += 1
    elif 0x31 <= s[pos] <= 0x39:
        first = pos
        pos += 1
        while 0x30 <= s[pos] <= 0x39:
            pos += 1
    else:
        return fail(sc, pos, E_SYNTAX)
    point = pos  # the integer digits end here
    if s[pos] == 0x2E:
        pos += 1
        if not 0x30 <= s[pos] <= 0x39:
            return fail(sc, pos, E_SYNTAX)
        if first < 0:
            while s[pos] == 0x30:
                pos += 1
            if 0x31 <= s[pos] <= 0x39:
                first = pos
        while 0x30 <= s[pos] <= 0x39:
            pos += 1
    if s[pos] == 0x65 or s[pos] == 0x45:
        pos += 1
        if s[pos] == 0x2B or s[pos] == 0x2D:
            negexp = s[pos] == 0x2D
            pos += 1
        if not 0x30 <= s[pos] <= 0x39:
            return fail(sc, pos, E_SYNTAX)
        while 0x30 <= s[pos] <= 0x39:
            if exp < EXP_CAP:
                exp = exp * 10 + (s[pos] - 0x30)
            pos += 1
        if negexp:
            exp = -exp
    elif point - start < MAX_EXP10:  # a short integer or plain decimal: always finite
        return pos
    if first < 0:
        return pos  # zero
    # decimal exponent of the leading significant digit
    lead = point - first - 1 if first < point else point - first
    lead += exp
    if lead > MAX_EXP10 or (lead == MAX_EXP10 and beyond_double(s, start, pos)):
        return fail(sc, start, E_RANGE)
    return pos


cdef inline Py_ssize_t scan_number(Scan* sc, Py_ssize_t pos) noexcept:
    """Validate the number at ``pos``; return the offset after it."""
    cdef const unsigned char* s = sc.s
    cdef Py_ssize_t start = pos
    if s[pos] == 0x2D:
        pos += 1
    if s[pos] == 0x30:
        pos += 1
    elif 0x31 <= s[pos] <= 0x39:
        pos += 1
        while 0x30 <= s[pos] <= 0x39:
            pos += 1
    else:
        return fail(sc, pos, E_SYNTAX)
    if s[pos] != 0x2E and s[pos] != 0x65 and s[pos] != 0x45 and pos - start < MAX_EXP10:
        return pos  # a short integer: always finite
    return scan_number_full(sc, start)


cdef Py_ssize_t skip_value(Scan* sc, Py_ssize_t pos, int depth) noexcept:
    """Validate and skip one value at ``pos`` inside a container at ``depth``."""
    cdef const unsigned char* s = sc.s
    cdef unsigned char stack[MAX_DEPTH]  # 1 for an object, 0 for an array
    cdef int top = 0
    cdef unsigned char c
    cdef Span key
    while True:
        c = s[pos]
        if c == 0x22:
            pos = scan_string(sc, pos, &key)
            if pos < 0:
                return -1
        elif c == 0x7B or c == 0x5B:  # '{', '['
            if depth + top >= MAX_DEPTH:
                return fail(sc, pos, E_DEPTH)
            pos = skip_ws(s, pos + 1)
            if s[pos] == c + 2:  # '}' or ']'
                pos += 1
            else:
                stack[top] = c == 0x7B
                top += 1
                if c == 0x7B:
                    if s[pos] != 0x22:
                        return fail(sc, pos, E_SYNTAX)
                    pos = scan_string(sc, pos, &key)
                    if pos < 0:
                        return -1
                    pos = skip_ws(s, pos)
                    if s[pos] != 0x3A:
                        return fail(sc, pos, E_SYNTAX)
                    pos = skip_ws(s, pos + 1)
                continue
        elif c == 0x2D or 0x30 <= c <= 0x39:
            pos = scan_number(sc, pos)
            if pos < 0:
                return -1
        elif c == 0x74 and s[pos + 1] == 0x72 and s[pos + 2] == 0x75 and s[pos + 3] == 0x65:
            pos += 4
        elif (c == 0x66 and s[pos + 1] == 0x61 and s[pos + 2] == 0x6C and s[pos + 3] == 0x73
              and s[pos + 4] == 0x65):
            pos += 5
        elif c == 0x6E and s[pos + 1] == 0x75 and s[pos + 2] == 0x6C and s[pos + 3] == 0x6C:
            pos += 4
        else:
            return fail(sc, pos, E_SYNTAX)
        # after a value: close containers, or move on to the next member
        while top:
            pos = skip_ws(s, pos)
            c = s[pos]
            if c == 0x2C:  # ','
                pos = skip_ws(s, pos + 1)
                if stack[top - 1]:
                    if s[pos] != 0x22:
                        return fail(sc, pos, E_SYNTAX)
                    pos = scan_string(sc, pos, &key)
                    if pos < 0:
                        return -1
                    pos = skip_ws(s, pos)
                    if s[pos] != 0x3A:
                        return fail(sc, pos, E_SYNTAX)
                    pos = skip_ws(s, pos + 1)
                break
            if c == (0x7D if stack[top - 1] else 0x5D):
                top -= 1
                pos += 1
            else:
                return fail(sc, pos, E_SYNTAX)
        if not top:
            return pos


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
        u = hex4(s + start + 2)
        start += 6
        if 0xD800 <= u <= 0xDBFF:  # validated: a low surrogate escape follows
            u = 0x10000 + ((u - 0xD800) << 10) + (hex4(s + start + 2) - 0xDC00)
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
    return skip_value(sc, pos, depth)


cdef Py_ssize_t read_object(Scan* sc, Py_ssize_t pos, int depth, int level, bint top,
                            Fields* f) noexcept:
    """Scan the object at ``pos`` (at ``depth``), recording the members ``level`` wants.

    Level 0 is a message (``top`` False: a batch member, only "method" is read),
    level 1 its ``params``, level 2 ``params._meta``. Later duplicates overwrite.
    """
    cdef const unsigned char* s = sc.s
    cdef Span key
    cdef int which
    pos = skip_ws(s, pos + 1)
    if s[pos] == 0x7D:
        return pos + 1
    while True:
        if s[pos] != 0x22:
            return fail(sc, pos, E_SYNTAX)
        pos = scan_string(sc, pos, &key)
        if pos < 0:
            return -1
        which = key_id(s, &key, level)
        if not top and which != KEY_METHOD:
            which = K_OTHER
        pos = skip_ws(s, pos)
        if s[pos] != 0x3A:
            return fail(sc, pos, E_SYNTAX)
        pos = skip_ws(s, pos + 1)
        if which == K_OTHER:
            pos = skip_value(sc, pos, depth)
        elif which == KEY_METHOD:
            f.method.kind = kind_of(s[pos])
            pos = read_string_or_skip(sc, pos, depth, &f.method)
        elif which == KEY_JSONRPC:
            pos = read_string_or_skip(sc, pos, depth, &f.jsonrpc)
        elif which == KEY_ID:
            f.id.start = pos
            f.id.kind = kind_of(s[pos])
            pos = skip_value(sc, pos, depth)
            f.id.end = pos
        elif which == KEY_RESULT:
            f.has_result = True
            pos = skip_value(sc, pos, depth)
        elif which == KEY_PARAMS or which == KEY_META:
            if which == KEY_PARAMS:
                f.name.kind = T_ABSENT
                f.uri.kind = T_ABSENT
            f.version.kind = T_ABSENT
            if s[pos] == 0x7B:
                pos = read_object(sc, pos, depth + 1, level + 1, True, f)
            else:
                pos = skip_value(sc, pos, depth)
        elif which == KEY_NAME:
            pos = read_string_or_skip(sc, pos, depth, &f.name)
        elif which == KEY_URI:
            pos = read_string_or_skip(sc, pos, depth, &f.uri)
        else:  # KEY_VERSION
            pos = read_string_or_skip(sc, pos, depth, &f.version)
        if pos < 0:
            return -1
        pos = skip_ws(s, pos)
        if s[pos] == 0x7D:
            return pos + 1
        if s[pos] != 0x2C:
            return fail(sc, pos, E_SYNTAX)
        pos = skip_ws(s, pos + 1)


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
    if sc.err == E_DEPTH:
        return ParseError(f"Parse error: nesting deeper than {MAX_DEPTH}")
    if sc.err == E_RANGE:
        return ParseError(f"Parse error: number out of range at byte {sc.err_pos}")
    if sc.n == 0 or skip_ws(sc.s, 0) == sc.n:
        return ParseError("Parse error: empty body")
    return ParseError(f"Parse error: invalid JSON at byte {sc.err_pos}")


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
            return Envelope(NOTIFICATION, None, text(s, &f.method), text(s, &f.name),
                            text(s, &f.uri), text(s, &f.version))
        if echo is None:
            return InvalidEnvelope("Invalid Request: id must be a string or a number")
        return Envelope(REQUEST, echo, text(s, &f.method), text(s, &f.name),
                        text(s, &f.uri), text(s, &f.version))
    if f.id.kind and f.has_result:
        if echo is None:
            if f.id.end - f.id.start != 4 or memcmp(s + f.id.start, b"null", 4) != 0:
                return InvalidEnvelope("Invalid Request: id must be a string, number or null")
            echo = PyBytes_FromStringAndSize(<const char*>s + f.id.start, 4)
        return Envelope(RESPONSE, echo)
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
    pos = skip_ws(s, 0)
    clear(&f)
    if s[pos] == 0x7B:
        pos = read_object(&sc, pos, 1, 0, True, &f)
        if pos >= 0:
            result = classify(s, &f)
    elif s[pos] == 0x5B:
        pos = skip_ws(s, pos + 1)
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
                    pos = skip_value(&sc, pos, 1)
                    if pos < 0:
                        break
                    if invalid is None:
                        invalid = InvalidEnvelope(
                            "Invalid Request: batch member is not an object")
                pos = skip_ws(s, pos)
                if s[pos] == 0x5D:
                    pos += 1
                    break
                if s[pos] != 0x2C:
                    pos = fail(&sc, pos, E_SYNTAX)
                    break
                pos = skip_ws(s, pos + 1)
            result = Envelope(BATCH, methods=tuple(methods))
    else:
        pos = skip_value(&sc, pos, 0)
        invalid = InvalidEnvelope("Invalid Request: not a JSON-RPC message")
    if pos >= 0:
        pos = skip_ws(s, pos)
        if pos != sc.n:
            fail(&sc, pos, E_SYNTAX)
    if sc.err:
        raise parse_error(&sc)
    if invalid is not None:
        raise invalid
    if isinstance(result, Envelope):
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
cdef bint DUP_ACCEPT = ACCEPT in _ROUTING_HEADERS
cdef bint DUP_CONTENT_LENGTH = CONTENT_LENGTH in _ROUTING_HEADERS


def scan_headers(list headers not None):
    """Pull the headers routing needs out of an ASGI header list in one pass.

    The first copy of each header wins; ``duplicate`` names the first routing
    header (``ROUTING_HEADERS``) that was sent more than once.
    """
    cdef object session_id = None, protocol_version = None, method = None, name = None
    cdef object last_event_id = None, origin = None, host = None, accept = None
    cdef object content_length = None, duplicate = None
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
        elif key == ACCEPT:
            if accept is None:
                accept = value
            elif duplicate is None and DUP_ACCEPT:
                duplicate = key
        elif key == CONTENT_LENGTH:
            if content_length is None:
                content_length = value
            elif duplicate is None and DUP_CONTENT_LENGTH:
                duplicate = key
    h = McpHeaders()
    h.session_id = session_id
    h.protocol_version = protocol_version
    h.method = method
    h.name = name
    h.last_event_id = last_event_id
    h.origin = origin
    h.host = host
    h.accept = accept
    h.content_length = content_length
    h.duplicate = duplicate
    return h
