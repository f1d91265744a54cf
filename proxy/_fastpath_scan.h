/* Strict JSON scanning for proxy/_fastpath.pyx: the byte loops that validate a body and
   skip the values routing never reads, plus the slotted-instance helpers the results are
   built with. Plain C so that compilers, sanitizers and editors see it; the .pyx declares
   what it uses in _fastpath_scan.pxd and keeps the JSON-RPC logic.

   The scanners read a bytes object's buffer, which CPython ends with a NUL: s[n] is
   always readable and stops every loop. Call fp_init() once before scanning. */

#ifndef PROXY_FASTPATH_SCAN_H
#define PROXY_FASTPATH_SCAN_H

#include <Python.h>
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
static unsigned char fp_str_stop[256]; /* '"', '\\', control and non-ASCII bytes */
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
   '"', '\\', a control character (s[n], the NUL, is one) or a non-ASCII byte.
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

#endif /* PROXY_FASTPATH_SCAN_H */
