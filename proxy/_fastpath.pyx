# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Compiled fast path: reads JSON-RPC envelopes and MCP headers from raw bytes."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject, PyTypeObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memcmp

cdef extern from *:
    """
    #include <string.h>
    #if PY_VERSION_HEX < 0x030C0000
    #include <structmember.h>
    #define FP_T_OBJECT_EX T_OBJECT_EX
    #define FP_READONLY READONLY
    #else
    #define FP_T_OBJECT_EX Py_T_OBJECT_EX
    #define FP_READONLY Py_READONLY
    #endif
    #if defined(__SSE2__) || defined(_M_X64) || defined(_M_AMD64)
    #include <emmintrin.h>
    #define FP_SSE2 1
    #endif
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && defined(FP_SSE2)
    #include <immintrin.h>
    #define FP_AVX2 1
    #endif
    #if defined(__GNUC__)
    #define FP_LIKELY(x) __builtin_expect(!!(x), 1)
    #define FP_UNLIKELY(x) __builtin_expect(!!(x), 0)
    #define FP_CTZ(x) __builtin_ctz(x)
    #else
    #include <intrin.h>
    #define FP_LIKELY(x) (x)
    #define FP_UNLIKELY(x) (x)
    static __inline int FP_CTZ(unsigned int x) {
        unsigned long bit; _BitScanForward(&bit, x); return (int)bit;
    }
    #endif

    #define FP_E_SYNTAX 1
    #define FP_E_DEPTH 2
    #define FP_E_RANGE 3
    #define FP_E_UTF8 4
    #define FP_MAX_DEPTH 1024  /* deepest nesting; the top-level container counts as 1 */
    #define FP_MAX_EXP10 308   /* decimal exponent of FP_INF_EDGE's leading digit */
    #define FP_EXP_CAP 1000000000000000LL  /* exponents saturate here */

    /* The smallest integer that rounds to infinity as a double: half-way to 2**1024
       (ties to even). Checked against str(2**1024 - 2**970) at import. */
    static const char FP_INF_EDGE[] =
        "1797693134862315807937289714053034150799341327100378269361737789804449682927"
        "6475094664901797758720709633028641669288791094655554785194040263065748867150"
        "5820681908902000708383676273854845817711531764475730270069855571366959622842"
        "9148198608349364752927190741684443655107043427115596995080930428801779041744"
        "97792";

    typedef struct {
        const unsigned char *s;  /* the body; s[n] is the NUL every bytes object ends with */
        Py_ssize_t n;
        Py_ssize_t err_pos;
        int err;
    } fp_scan;

    /* Byte classes, filled by fp_init. */
    static unsigned char fp_is_ws[256];    /* JSON whitespace */
    static unsigned char fp_hex[256];      /* hex digit value + 1, 0 if not a hex digit */
    static unsigned char fp_str_stop[256]; /* '"', '\\\\', control and non-ASCII bytes */
    #ifdef FP_AVX2
    static int fp_avx2 = 0;
    #endif

    static void fp_init(void) {
        int i;
        for (i = 0; i < 256; i++) {
            fp_is_ws[i] = (i == 0x20 || i == 0x0A || i == 0x0D || i == 0x09);
            fp_hex[i] = (i >= '0' && i <= '9') ? i - '0' + 1
                      : (i >= 'a' && i <= 'f') ? i - 'a' + 11
                      : (i >= 'A' && i <= 'F') ? i - 'A' + 11 : 0;
            fp_str_stop[i] = (i < 0x20 || i == 0x22 || i == 0x5C || i >= 0x80);
        }
    #ifdef FP_AVX2
        fp_avx2 = __builtin_cpu_supports("avx2");
    #endif
    }

    static Py_ssize_t fp_fail(fp_scan *sc, Py_ssize_t pos, int err) {
        if (!sc->err) {
            sc->err = err;
            sc->err_pos = pos;
        }
        return -1;
    }

    static inline Py_ssize_t fp_ws(const unsigned char *s, Py_ssize_t pos) {
        while (s[pos] <= 0x20 && fp_is_ws[s[pos]])
            pos++;
        return pos;
    }

    static inline int fp_digit(unsigned char c) { return (unsigned char)(c - '0') < 10; }
    static inline int fp_cont(unsigned char c) { return (c & 0xC0) == 0x80; }

    /* ---- UTF-8 ---- */

    /* Validate the run of multi-byte sequences at pos (strict UTF-8, Unicode table 3-7);
       return the offset of the next ASCII byte, or -1 - (offset of the bad byte).
       s[n] is NUL, never a continuation byte, so no check reads past it. */
    static Py_ssize_t fp_utf8_seqs(const unsigned char *s, Py_ssize_t pos) {
        unsigned char c, c1;
        do {
            c = s[pos];
            c1 = s[pos + 1];
            if (c >= 0xC2 && c <= 0xDF) {
                if (!fp_cont(c1))
                    return -1 - pos;
                pos += 2;
            } else if (c >= 0xE0 && c <= 0xEF) {
                if (c == 0xE0 ? (c1 < 0xA0 || c1 > 0xBF)
                    : c == 0xED ? (c1 < 0x80 || c1 > 0x9F) : !fp_cont(c1))
                    return -1 - pos;
                if (!fp_cont(s[pos + 2]))
                    return -1 - pos;
                pos += 3;
            } else if (c >= 0xF0 && c <= 0xF4) {
                if (c == 0xF0 ? (c1 < 0x90 || c1 > 0xBF)
                    : c == 0xF4 ? (c1 < 0x80 || c1 > 0x8F) : !fp_cont(c1))
                    return -1 - pos;
                if (!fp_cont(s[pos + 2]) || !fp_cont(s[pos + 3]))
                    return -1 - pos;
                pos += 4;
            } else {
                return -1 - pos;
            }
        } while (s[pos] >= 0x80);
        return pos;
    }

    /* ---- strings ---- */

    #ifdef FP_AVX2
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
                return pos + FP_CTZ(mask);
            pos += 32;
        }
        return pos;
    }
    #endif

    /* First byte at or after pos that ends a run of plain ASCII string content:
       '"', '\\\\', a control character (s[n], the NUL, is one) or a non-ASCII byte.
       The signed compare counts bytes >= 0x80 as below 0x20. */
    static inline Py_ssize_t fp_string_run(const unsigned char *s, Py_ssize_t pos,
                                           Py_ssize_t n) {
    #ifdef FP_SSE2
        const __m128i quote = _mm_set1_epi8(0x22), bslash = _mm_set1_epi8(0x5C);
        const __m128i space = _mm_set1_epi8(0x20);
        int blocks = 0;
        while (pos + 16 <= n) {
            __m128i v = _mm_loadu_si128((const __m128i *)(s + pos));
            __m128i hit = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
                _mm_cmplt_epi8(v, space));
            unsigned int mask = (unsigned int)_mm_movemask_epi8(hit);
            if (FP_LIKELY(mask))
                return pos + FP_CTZ(mask);
            pos += 16;
    #ifdef FP_AVX2
            if (++blocks == 2 && fp_avx2)  /* past 32 bytes: a long string, go wide */
                pos = fp_string_run_avx2(s, pos, n);
    #else
            (void)blocks;
    #endif
        }
    #endif
        while (!fp_str_stop[s[pos]])
            pos++;
        return pos;
    }

    static inline unsigned int fp_hex4(const unsigned char *p) {
        return (unsigned int)(fp_hex[p[0]] - 1) << 12 | (unsigned int)(fp_hex[p[1]] - 1) << 8
             | (unsigned int)(fp_hex[p[2]] - 1) << 4 | (unsigned int)(fp_hex[p[3]] - 1);
    }

    static inline int fp_is_hex4(const unsigned char *p) {
        return fp_hex[p[0]] && fp_hex[p[1]] && fp_hex[p[2]] && fp_hex[p[3]];
    }

    /* Validate the escape at pos (a backslash); return the offset after it. */
    static Py_ssize_t fp_escape(fp_scan *sc, Py_ssize_t pos) {
        const unsigned char *s = sc->s;
        unsigned char c1 = s[pos + 1];
        unsigned int u;
        if (c1 == 'u') {
            if (!fp_is_hex4(s + pos + 2))
                return fp_fail(sc, pos, FP_E_SYNTAX);
            u = fp_hex4(s + pos + 2);
            if (u >= 0xD800 && u <= 0xDBFF) {  /* a low surrogate escape must follow */
                pos += 6;
                if (s[pos] != 0x5C || s[pos + 1] != 'u' || !fp_is_hex4(s + pos + 2))
                    return fp_fail(sc, pos, FP_E_SYNTAX);
                u = fp_hex4(s + pos + 2);
                if (u < 0xDC00 || u > 0xDFFF)
                    return fp_fail(sc, pos, FP_E_SYNTAX);
            } else if (u >= 0xDC00 && u <= 0xDFFF) {
                return fp_fail(sc, pos, FP_E_SYNTAX);
            }
            return pos + 6;
        }
        if (c1 == '"' || c1 == 0x5C || c1 == '/' || c1 == 'b' || c1 == 'f' || c1 == 'n'
                || c1 == 'r' || c1 == 't')
            return pos + 2;
        return fp_fail(sc, pos, FP_E_SYNTAX);
    }

    /* Validate the string whose content starts at pos (after the opening quote);
       return the offset of the closing quote. Sets *escaped if it holds an escape. */
    static inline Py_ssize_t fp_string(fp_scan *sc, Py_ssize_t pos, int *escaped) {
        const unsigned char *s = sc->s;
        for (;;) {
            pos = fp_string_run(s, pos, sc->n);
            if (FP_LIKELY(s[pos] == 0x22))
                return pos;
            if (s[pos] >= 0x80) {
                pos = fp_utf8_seqs(s, pos);
                if (pos < 0)
                    return fp_fail(sc, -1 - pos, FP_E_UTF8);
            } else if (s[pos] == 0x5C) {
                *escaped = 1;
                pos = fp_escape(sc, pos);
                if (pos < 0)
                    return -1;
            } else {  /* a control character, or the end of the body */
                return fp_fail(sc, pos, FP_E_SYNTAX);
            }
        }
    }

    /* ---- numbers ---- */

    /* For a number whose leading digit is at 10**308: does it round to infinity? */
    static int fp_beyond_double(const unsigned char *s, Py_ssize_t start, Py_ssize_t end) {
        const Py_ssize_t m = (Py_ssize_t)sizeof(FP_INF_EDGE) - 1;
        Py_ssize_t k = 0;
        int leading = 1;
        unsigned char c;
        while (start < end) {
            c = s[start++];
            if (c == '.' || c == '-')
                continue;
            if (c == 'e' || c == 'E')
                break;
            if (leading && c == '0')
                continue;
            leading = 0;
            if (k == m)  /* equal so far, and any further digit only adds */
                return 1;
            if (c != (unsigned char)FP_INF_EDGE[k])
                return c > (unsigned char)FP_INF_EDGE[k];
            k++;
        }
        for (; k < m; k++)  /* the digits ran out: below the edge unless the rest is 0 */
            if (FP_INF_EDGE[k] != '0')
                return 0;
        return 1;  /* exactly the edge, which rounds (ties to even) up to infinity */
    }

    /* fp_number for exponents and long integers (which may overflow). */
    static Py_ssize_t fp_number_full(fp_scan *sc, Py_ssize_t pos) {
        const unsigned char *s = sc->s;
        Py_ssize_t start = pos, first = -1, point, lead;
        long long exp = 0;
        int negexp = 0;
        if (s[pos] == '-')
            pos++;
        if (s[pos] == '0') {
            pos++;
        } else if (s[pos] >= '1' && s[pos] <= '9') {
            first = pos++;
            while (fp_digit(s[pos]))
                pos++;
        } else {
            return fp_fail(sc, pos, FP_E_SYNTAX);
        }
        point = pos;  /* the integer digits end here */
        if (s[pos] == '.') {
            pos++;
            if (!fp_digit(s[pos]))
                return fp_fail(sc, pos, FP_E_SYNTAX);
            if (first < 0) {
                while (s[pos] == '0')
                    pos++;
                if (s[pos] >= '1' && s[pos] <= '9')
                    first = pos;
            }
            while (fp_digit(s[pos]))
                pos++;
        }
        if (s[pos] == 'e' || s[pos] == 'E') {
            pos++;
            if (s[pos] == '+' || s[pos] == '-')
                negexp = s[pos++] == '-';
            if (!fp_digit(s[pos]))
                return fp_fail(sc, pos, FP_E_SYNTAX);
            while (fp_digit(s[pos])) {
                if (exp < FP_EXP_CAP)
                    exp = exp * 10 + (s[pos] - '0');
                pos++;
            }
            if (negexp)
                exp = -exp;
        } else if (point - start < FP_MAX_EXP10) {  /* short integer part: always finite */
            return pos;
        }
        if (first < 0)
            return pos;  /* zero */
        /* decimal exponent of the leading significant digit */
        lead = first < point ? point - first - 1 : point - first;
        lead += (Py_ssize_t)exp;
        if (lead > FP_MAX_EXP10 || (lead == FP_MAX_EXP10 && fp_beyond_double(s, start, pos)))
            return fp_fail(sc, start, FP_E_RANGE);
        return pos;
    }

    /* Validate the number at pos; return the offset after it. */
    static inline Py_ssize_t fp_number(fp_scan *sc, Py_ssize_t pos) {
        const unsigned char *s = sc->s;
        Py_ssize_t start = pos;
        if (s[pos] == '-')
            pos++;
        if (s[pos] == '0') {
            pos++;
        } else if (FP_LIKELY(s[pos] >= '1' && s[pos] <= '9')) {
            pos++;
            while (fp_digit(s[pos]))
                pos++;
        } else {
            return fp_fail(sc, pos, FP_E_SYNTAX);
        }
        if (FP_UNLIKELY(pos - start >= FP_MAX_EXP10))
            return fp_number_full(sc, start);
        if (s[pos] == '.') {
            pos++;
            if (!fp_digit(s[pos]))
                return fp_fail(sc, pos, FP_E_SYNTAX);
            pos++;
            while (fp_digit(s[pos]))
                pos++;
        }
        if (FP_UNLIKELY(s[pos] == 'e' || s[pos] == 'E'))
            return fp_number_full(sc, start);
        return pos;  /* no exponent and a short integer part: always finite */
    }

    /* ---- skipping a value nobody reads ---- */

    /* Validate and skip one value at pos inside a container at depth; return the offset
       after it. A goto state machine: value, key, after-value; no calls per token but
       for the rare escapes and long numbers. */
    static Py_ssize_t fp_skip(fp_scan *sc, Py_ssize_t pos, int depth) {
        const unsigned char *s = sc->s;
        unsigned char stack[FP_MAX_DEPTH];  /* 1 for an object, 0 for an array */
        int top = 0, escaped = 0;
        unsigned char c;
    value:  /* most likely first: strings, numbers, containers, literals */
        c = s[pos];
        if (c == '"') {
            pos = fp_string(sc, pos + 1, &escaped);
            if (pos < 0)
                return -1;
            pos++;
            goto after;
        }
        if (fp_digit(c) || c == '-') {
            pos = fp_number(sc, pos);
            if (pos < 0)
                return -1;
            goto after;
        }
        if (c == '{' || c == '[') {
            if (FP_UNLIKELY(depth + top >= FP_MAX_DEPTH))
                return fp_fail(sc, pos, FP_E_DEPTH);
            pos++;
            if (FP_UNLIKELY(s[pos] <= 0x20))
                pos = fp_ws(s, pos);
            if (s[pos] == c + 2) {  /* '}' or ']' */
                pos++;
                goto after;
            }
            stack[top++] = c == '{';
            if (c == '{')
                goto key;
            goto value;
        }
        if (c == 't' && s[pos + 1] == 'r' && s[pos + 2] == 'u' && s[pos + 3] == 'e') {
            pos += 4;
            goto after;
        }
        if (c == 'f' && s[pos + 1] == 'a' && s[pos + 2] == 'l' && s[pos + 3] == 's'
                && s[pos + 4] == 'e') {
            pos += 5;
            goto after;
        }
        if (c == 'n' && s[pos + 1] == 'u' && s[pos + 2] == 'l' && s[pos + 3] == 'l') {
            pos += 4;
            goto after;
        }
        return fp_fail(sc, pos, FP_E_SYNTAX);
    key:
        if (FP_UNLIKELY(s[pos] != 0x22))
            return fp_fail(sc, pos, FP_E_SYNTAX);
        pos = fp_string(sc, pos + 1, &escaped);
        if (pos < 0)
            return -1;
        pos++;
        if (FP_UNLIKELY(s[pos] <= 0x20))
            pos = fp_ws(s, pos);
        if (FP_UNLIKELY(s[pos] != ':'))
            return fp_fail(sc, pos, FP_E_SYNTAX);
        pos++;
        if (FP_UNLIKELY(s[pos] <= 0x20))
            pos = fp_ws(s, pos);
        goto value;
    after:
        if (!top)
            return pos;
        if (FP_UNLIKELY(s[pos] <= 0x20))
            pos = fp_ws(s, pos);
        c = s[pos];
        if (c == ',') {
            pos++;
            if (FP_UNLIKELY(s[pos] <= 0x20))
                pos = fp_ws(s, pos);
            if (stack[top - 1])
                goto key;
            goto value;
        }
        if (c == (stack[top - 1] ? '}' : ']')) {
            top--;
            pos++;
            goto after;
        }
        return fp_fail(sc, pos, FP_E_SYNTAX);
    }

    /* ---- results: slotted instances without running Python __init__ ---- */

    /* The offset of a writable object slot, from its member descriptor; -1 if not one. */
    static Py_ssize_t fp_slot_offset(PyObject *descr) {
        PyMemberDef *m;
        if (Py_TYPE(descr) != &PyMemberDescr_Type)
            return -1;
        m = ((PyMemberDescrObject *)descr)->d_member;
        if (m->type != FP_T_OBJECT_EX || (m->flags & FP_READONLY))
            return -1;
        return m->offset;
    }

    /* A new instance of tp with each slot at offsets[i] set to values[i]. */
    static PyObject *fp_new_slotted(PyTypeObject *tp, const Py_ssize_t *offsets,
                                    PyObject *const *values, int count) {
        int i;
        PyObject *obj = tp->tp_alloc(tp, 0);
        if (obj == NULL)
            return NULL;
        for (i = 0; i < count; i++) {
            Py_INCREF(values[i]);
            *(PyObject **)((char *)obj + offsets[i]) = values[i];
        }
        return obj;
    }
    """
    ctypedef struct fp_scan:
        const unsigned char* s
        Py_ssize_t n
        Py_ssize_t err_pos
        int err
    enum:
        FP_E_SYNTAX
        FP_E_DEPTH
        FP_E_RANGE
        FP_E_UTF8
        FP_MAX_DEPTH
    const char* FP_INF_EDGE
    void fp_init() noexcept
    Py_ssize_t fp_fail(fp_scan* sc, Py_ssize_t pos, int err) noexcept
    Py_ssize_t fp_ws(const unsigned char* s, Py_ssize_t pos) noexcept
    Py_ssize_t fp_string(fp_scan* sc, Py_ssize_t pos, int* escaped) noexcept
    Py_ssize_t fp_skip(fp_scan* sc, Py_ssize_t pos, int depth) noexcept
    unsigned int fp_hex4(const unsigned char* p) noexcept
    Py_ssize_t fp_slot_offset(object descr) noexcept
    object fp_new_slotted(PyTypeObject* tp, const Py_ssize_t* offsets, PyObject** values,
                          int count)

fp_init()
if FP_INF_EDGE != str(2**1024 - 2**970).encode():  # the C literal must be exact
    raise ImportError("proxy._fastpath: FP_INF_EDGE is not 2**1024 - 2**970")


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
                           "last_event_id", "origin", "host", "accept", "content_length",
                           "duplicate")
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
    cdef PyObject* values[10]
    if not FAST_HEADERS:
        h = McpHeaders()
        for k, v in zip(HEADER_SLOTS, (session_id, protocol_version, method, name,
                                       last_event_id, origin, host, accept, content_length,
                                       duplicate)):
            setattr(h, k, v)
        return h
    values[0] = <PyObject*>session_id
    values[1] = <PyObject*>protocol_version
    values[2] = <PyObject*>method
    values[3] = <PyObject*>name
    values[4] = <PyObject*>last_event_id
    values[5] = <PyObject*>origin
    values[6] = <PyObject*>host
    values[7] = <PyObject*>accept
    values[8] = <PyObject*>content_length
    values[9] = <PyObject*>duplicate
    return fp_new_slotted(<PyTypeObject*>McpHeaders, HEADER_OFFSETS, values, 10)
