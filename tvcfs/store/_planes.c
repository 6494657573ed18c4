/* Compiled kernels of the packed-block decode (tvcfs.store.encodings; docs/format.md
 * "Packed blocks", docs/performance.md "Packed blocks", ninth round).
 *
 * The same byte transforms as the numpy code of encodings.py, in one pass each and
 * with the GIL released: byte (un)grouping of 2-, 4- and 8-byte elements, optionally
 * fused with the XOR of a delta's base, and the expansion of a sparse section
 * (gaps and values) into a plane. Plain CPython C API and the buffer protocol: no
 * numpy C API. Optional at install time: without this module encodings.py uses numpy
 * (TVCFS_NO_C=1 forces that too). Every length and position is checked before
 * anything is written out of bounds: a hostile value gives ValueError, which
 * encodings.py reports as CorruptBlock.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
/* one AVX2 clone and the baseline (SSE2), chosen once at load by the CPU */
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif
#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

/* to_planes 0 (ungroup): out[i*E + j] = src[j*n + i]; to_planes 1 (group): out[j*n + i] =
 * src[i*E + j]; XORed with base[i*E + j] (the interleaved side) when base is given.
 * Inlined with constant E and to_planes: gcc -O3 vectorises each variant (interleaving
 * shuffles; one loop per case of base: unswitched by gcc, the 8-byte one ran 2x slower). */
INLINE void regroup_e(const uint8_t *restrict src, size_t n, size_t E, uint8_t *restrict out,
                      const uint8_t *restrict base, int to_planes)
{
#define EL (i * E + j)
#define PL (j * n + i)
    if (base)
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < E; j++)
                out[to_planes ? PL : EL] = src[to_planes ? EL : PL] ^ base[EL];
    else
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < E; j++)
                out[to_planes ? PL : EL] = src[to_planes ? EL : PL];
#undef EL
#undef PL
}

CLONES static void ungroup2(const uint8_t *restrict s, size_t n, uint8_t *restrict o, const uint8_t *restrict b) { regroup_e(s, n, 2, o, b, 0); }
CLONES static void ungroup4(const uint8_t *restrict s, size_t n, uint8_t *restrict o, const uint8_t *restrict b) { regroup_e(s, n, 4, o, b, 0); }
CLONES static void ungroup8(const uint8_t *restrict s, size_t n, uint8_t *restrict o, const uint8_t *restrict b) { regroup_e(s, n, 8, o, b, 0); }
CLONES static void group2(const uint8_t *restrict s, size_t n, uint8_t *restrict o, const uint8_t *restrict b) { regroup_e(s, n, 2, o, b, 1); }
CLONES static void group4(const uint8_t *restrict s, size_t n, uint8_t *restrict o, const uint8_t *restrict b) { regroup_e(s, n, 4, o, b, 1); }
CLONES static void group8(const uint8_t *restrict s, size_t n, uint8_t *restrict o, const uint8_t *restrict b) { regroup_e(s, n, 8, o, b, 1); }

CLONES static void xor_into(uint8_t *restrict o, const uint8_t *restrict b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        o[i] ^= b[i];
}

typedef void (*kernel)(const uint8_t *restrict, size_t, uint8_t *restrict, const uint8_t *restrict);

static int overlaps(const Py_buffer *a, const Py_buffer *b)
{
    const char *x = a->buf, *y = b->buf;
    return a->len && b->len && x < y + b->len && y < x + a->len;
}

/* shared body of group() and ungroup() */
static PyObject *regroup(PyObject *args, int inverse)
{
    Py_buffer src, out, base = {0};
    PyObject *base_obj = Py_None;
    int elem;
    kernel k = NULL;
    if (!PyArg_ParseTuple(args, inverse ? "y*iw*|O:ungroup" : "y*iw*|O:group", &src, &elem, &out, &base_obj))
        return NULL;
    PyObject *ret = NULL;
    int have_base = base_obj != Py_None;
    if (have_base && PyObject_GetBuffer(base_obj, &base, PyBUF_SIMPLE) < 0)
        goto done;
    switch (elem) {
    case 1: break;
    case 2: k = inverse ? ungroup2 : group2; break;
    case 4: k = inverse ? ungroup4 : group4; break;
    case 8: k = inverse ? ungroup8 : group8; break;
    default:
        PyErr_Format(PyExc_ValueError, "element size must be 1, 2, 4 or 8, got %d", elem);
        goto done;
    }
    if (out.len != src.len || (have_base && base.len != src.len)) {
        PyErr_Format(PyExc_ValueError, "%s of %zd bytes into %zd bytes (base: %zd)",
                     inverse ? "ungroup" : "group", src.len, out.len, have_base ? base.len : src.len);
        goto done;
    }
    if (overlaps(&src, &out) || (have_base && overlaps(&base, &out))) {
        PyErr_SetString(PyExc_ValueError, "the output overlaps the input");
        goto done;
    }
    {
        const uint8_t *s = src.buf, *b = have_base ? base.buf : NULL;
        uint8_t *o = out.buf;
        size_t len = (size_t)src.len, n = len / (size_t)elem, done_ = k ? n * (size_t)elem : 0;
        Py_BEGIN_ALLOW_THREADS
        if (k)
            k(s, n, o, b);
        /* the len % elem trailing bytes (all of them for elem 1) as they are */
        memmove(o + done_, s + done_, len - done_);
        if (b)
            xor_into(o + done_, b + done_, len - done_);
        Py_END_ALLOW_THREADS
    }
    ret = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    if (have_base && base.obj)
        PyBuffer_Release(&base);
    return ret;
}

PyDoc_STRVAR(ungroup_doc,
"ungroup(planes, elem, out, base=None) -> None\n\n"
"Interleave the elem byte planes of `planes` (bytes-like, n = len // elem bytes each,\n"
"then len % elem trailing bytes) into `out` (writable, same length, not overlapping):\n"
"out[i*elem + j] = planes[j*n + i], XORed with `base` (same length) when given.\n"
"elem 1, 2, 4 or 8. Raises ValueError for another element size, unequal lengths or\n"
"overlapping buffers. Releases the GIL.");

static PyObject *py_ungroup(PyObject *self, PyObject *args) { return regroup(args, 1); }

PyDoc_STRVAR(group_doc,
"group(data, elem, out, base=None) -> None\n\n"
"The inverse of ungroup: `data` (XORed with `base` when given) as elem byte planes\n"
"followed by its len % elem trailing bytes, into `out` (writable, same length, not\n"
"overlapping). Errors as ungroup. Releases the GIL.");

static PyObject *py_group(PyObject *self, PyObject *args) { return regroup(args, 0); }

PyDoc_STRVAR(sparse_doc,
"sparse_apply(out, base, gaps, values) -> None\n\n"
"Expand a sparse section into plane `out` (writable, n bytes): `out` becomes `base`\n"
"(bytes-like of n bytes; `out` itself: in place) or zeros when base is None, then\n"
"for each i the byte at\n"
"position gaps[0] + ... + gaps[i] - 1 is XORed with values[i] (gaps and values: k\n"
"bytes each). Raises ValueError, with `out` partly written, when a gap is 0, a\n"
"position is past the plane, the lengths differ or buffers overlap; never writes\n"
"outside `out`. Releases the GIL.");

static PyObject *py_sparse_apply(PyObject *self, PyObject *args)
{
    Py_buffer out, gaps, values, base = {0};
    PyObject *base_obj;
    if (!PyArg_ParseTuple(args, "w*Oy*y*:sparse_apply", &out, &base_obj, &gaps, &values))
        return NULL;
    PyObject *ret = NULL;
    int have_base = base_obj != Py_None;
    if (have_base && PyObject_GetBuffer(base_obj, &base, PyBUF_SIMPLE) < 0)
        goto done;
    if (gaps.len != values.len || (have_base && base.len != out.len)) {
        PyErr_Format(PyExc_ValueError, "sparse section of %zd gaps and %zd values into %zd bytes (base: %zd)",
                     gaps.len, values.len, out.len, have_base ? base.len : out.len);
        goto done;
    }
    /* base may be out itself (the same bytes: XOR in place), else nothing may overlap */
    int inplace = have_base && base.buf == out.buf;
    if (overlaps(&out, &gaps) || overlaps(&out, &values) || (have_base && !inplace && overlaps(&out, &base))) {
        PyErr_SetString(PyExc_ValueError, "the output overlaps the input");
        goto done;
    }
    {
        uint8_t *o = out.buf;
        const uint8_t *g = gaps.buf, *v = values.buf, *b = have_base ? base.buf : NULL;
        size_t n = (size_t)out.len, k = (size_t)gaps.len, pos = 0, i = 0;
        int bad = 0;
        Py_BEGIN_ALLOW_THREADS
        if (!b)
            memset(o, 0, n);
        else if (!inplace)
            memcpy(o, b, n);
        for (; i < k; i++) {
            unsigned d = g[i];
            pos += d;               /* 1-based: at most 255 * k, no overflow */
            if (d == 0 || pos > n) {
                bad = 1;
                break;
            }
            o[pos - 1] ^= v[i];
        }
        Py_END_ALLOW_THREADS
        if (bad) {
            if (g[i] == 0)
                PyErr_Format(PyExc_ValueError, "gap %zu of the sparse section is 0", i);
            else
                PyErr_Format(PyExc_ValueError, "position %zu of the sparse section is outside its %zu bytes",
                             pos - 1, n);
            goto done;
        }
    }
    ret = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&out);
    PyBuffer_Release(&gaps);
    PyBuffer_Release(&values);
    if (have_base && base.obj)
        PyBuffer_Release(&base);
    return ret;
}

static PyMethodDef methods[] = {
    {"ungroup", py_ungroup, METH_VARARGS, ungroup_doc},
    {"group", py_group, METH_VARARGS, group_doc},
    {"sparse_apply", py_sparse_apply, METH_VARARGS, sparse_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_planes",
    "Compiled kernels of the packed-block decode (tvcfs.store.encodings): byte (un)grouping\n"
    "fused with a delta's XOR, sparse-section expansion; the GIL released.",
    0, methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__planes(void) { return PyModuleDef_Init(&module); }
