/* The WAL frame checks of the shadow copy, in C: salts and the checksum chain.
 *
 * SQLite's frame checksum is a serial recurrence over 32-bit words, cheap in C
 * (~0.1-0.2 ms a MiB) and dear in Python; numpy's matrix form of it (wal.py)
 * costs the sidecar ~13 MiB of resident memory for its import alone. The loop
 * is SQLite's walChecksumBytes; it runs without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define FRAME_HEADER_SIZE 24

enum { OK = 0, SALT_MISMATCH = 1, CHECKSUM_MISMATCH = 2 };

static inline uint32_t load_be(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline uint32_t load_le(const unsigned char *p) {
    return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | (uint32_t)p[0];
}

/* Continue the checksum (s[0], s[1]) over n bytes (a multiple of 8). */
static void sum_words(const unsigned char *p, Py_ssize_t n, int big_endian, uint32_t s[2]) {
    uint32_t s0 = s[0], s1 = s[1];
    const unsigned char *end = p + n;
    if (big_endian) {
        for (; p < end; p += 8) {
            s0 += load_be(p) + s1;
            s1 += load_be(p + 4) + s0;
        }
    } else {
        for (; p < end; p += 8) {
            s0 += load_le(p) + s1;
            s1 += load_le(p + 4) + s0;
        }
    }
    s[0] = s0;
    s[1] = s1;
}

/* How many whole frames of page_size view holds; -1 (view released, ValueError
 * set) for a page size SQLite cannot use. */
static Py_ssize_t whole_frames(Py_buffer *view, Py_ssize_t page_size) {
    if (page_size >= 512 && page_size <= 65536 && !(page_size & (page_size - 1)))
        return view->len / (FRAME_HEADER_SIZE + page_size);
    PyBuffer_Release(view);
    PyErr_Format(PyExc_ValueError, "bad page size %zd", page_size);
    return -1;
}

PyDoc_STRVAR(scan_doc,
"scan(data, page_size, big_endian, salt1, salt2, s0, s1)\n"
"-> (frames, problem, frames_checksum, commit_ends, commit_checksum)\n\n"
"Walk the whole frames of data while their salts and checksum chain (from\n"
"(s0, s1)) hold. frames: how many did; problem: 0, or 1 (salt mismatch) or 2\n"
"(checksum mismatch) at the frame after them; frames_checksum: the chain after\n"
"them; commit_ends: the end offset of each commit frame among them;\n"
"commit_checksum: the chain after the last of those ((s0, s1) if none).");

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t page_size;
    int big_endian;
    unsigned long salt1, salt2, in0, in1;
    if (!PyArg_ParseTuple(args, "y*npkkkk", &view, &page_size, &big_endian, &salt1, &salt2, &in0, &in1))
        return NULL;
    const Py_ssize_t count = whole_frames(&view, page_size), frame_size = FRAME_HEADER_SIZE + page_size;
    if (count < 0)
        return NULL;
    /* Commit frames are few (one per transaction): their indexes go in a
     * buffer sized for the worst case, turned into a list after the loop. */
    Py_ssize_t *commits = PyMem_RawMalloc((size_t)(count ? count : 1) * sizeof(Py_ssize_t));
    if (commits == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    Py_ssize_t valid = 0, ncommits = 0;
    int problem = OK;
    uint32_t s[2] = {(uint32_t)in0, (uint32_t)in1};
    uint32_t commit_sum[2] = {(uint32_t)in0, (uint32_t)in1};
    Py_BEGIN_ALLOW_THREADS
    for (; valid < count; valid++) {
        const unsigned char *frame = (const unsigned char *)view.buf + valid * frame_size;
        if (load_be(frame + 8) != (uint32_t)salt1 || load_be(frame + 12) != (uint32_t)salt2) {
            problem = SALT_MISMATCH;
            break;
        }
        uint32_t t[2] = {s[0], s[1]};
        sum_words(frame, 8, big_endian, t);
        sum_words(frame + FRAME_HEADER_SIZE, page_size, big_endian, t);
        if (t[0] != load_be(frame + 16) || t[1] != load_be(frame + 20)) {
            problem = CHECKSUM_MISMATCH;
            break;
        }
        s[0] = t[0];
        s[1] = t[1];
        if (load_be(frame + 4)) {
            commits[ncommits++] = valid;
            commit_sum[0] = s[0];
            commit_sum[1] = s[1];
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    PyObject *ends = PyList_New(ncommits);
    if (ends != NULL) {
        for (Py_ssize_t i = 0; i < ncommits; i++) {
            PyObject *end = PyLong_FromSsize_t((commits[i] + 1) * frame_size);
            if (end == NULL) {
                Py_CLEAR(ends);
                break;
            }
            PyList_SET_ITEM(ends, i, end);
        }
    }
    PyMem_RawFree(commits);
    if (ends == NULL)
        return NULL;
    return Py_BuildValue("ni(kk)N(kk)", valid, problem, (unsigned long)s[0], (unsigned long)s[1], ends,
                         (unsigned long)commit_sum[0], (unsigned long)commit_sum[1]);
}

PyDoc_STRVAR(salted_doc,
"salted(data, page_size, salt1, salt2) -> int\n\n"
"How many of the whole frames of data, from the first, carry the salts.");

static PyObject *salted(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t page_size;
    unsigned long salt1, salt2;
    if (!PyArg_ParseTuple(args, "y*nkk", &view, &page_size, &salt1, &salt2))
        return NULL;
    const Py_ssize_t count = whole_frames(&view, page_size), frame_size = FRAME_HEADER_SIZE + page_size;
    if (count < 0)
        return NULL;
    const unsigned char *salts = (const unsigned char *)view.buf + 8;
    Py_ssize_t i = 0;
    while (i < count && load_be(salts + i * frame_size) == (uint32_t)salt1
           && load_be(salts + i * frame_size + 4) == (uint32_t)salt2)
        i++;
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(i);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {"salted", salted, METH_VARARGS, salted_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_walcheck", "WAL frame checks (salts, checksum chain) in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__walcheck(void) {
    return PyModule_Create(&module);
}
