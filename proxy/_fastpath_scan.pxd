# Declarations of the C scanner in _fastpath_scan.h, for proxy/_fastpath.pyx.
# Extern only: cimporting this builds nothing and imports nothing at run time.

from cpython.object cimport PyObject, PyTypeObject


cdef extern from "_fastpath_scan.h":
    ctypedef struct fp_scan:
        const unsigned char* s  # the body; s[n] is the NUL every bytes object ends with
        Py_ssize_t n
        Py_ssize_t err_pos      # where the first error was found
        int err                 # FP_E_*, 0 while the body is valid
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
