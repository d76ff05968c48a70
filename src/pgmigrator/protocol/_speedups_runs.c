/*
 * Runs of inserted rows kept as pgoutput tuple bytes: the follower's bulk path without a Python
 * object per row.
 *
 * In a backlog most row changes are inserts, and an inserted row needs no decoding at all on its
 * way to the destination: its pgoutput tuple (a kind and a length-prefixed text value per column)
 * turns into a COPY text line with a byte loop. take_row() keeps a run of such inserts into one
 * relation in an InsertRun (the tuples concatenated, as sent) instead of building a TupleData and
 * an Insert per row; the applier then either streams the run into COPY (copy_text) or, when the
 * run must be folded with other changes of its table, expands it to the same TupleData values the
 * decoder builds (tuples).
 *
 * Only inserts whose every column is text ('t') or NULL ('n') join a run; anything else (a binary
 * value, a malformed message) goes to the decoder as before, so errors read the same.
 *
 * take_row(rows, message) -> bool
 *   message  one pgoutput Insert, Update or Delete (the XLogData payload)
 *   rows     the reader's pending list: an insert extends the InsertRun at its end when that run
 *            is of the same relation and still open, else a new run is appended; an update or
 *            delete is decoded and appended (speedups_row_change)
 *   returns  False when the message is not taken (not a row change, or not accepted: the Python
 *            decoder's turn)
 */
#include "_speedups.h"
#include <stdint.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    uint32_t oid;
    int sealed; /* set once the applier reads it: never appended to again */
    Py_ssize_t rows;
    char *buf; /* the tuples, back to back, as pgoutput sent them */
    Py_ssize_t len, cap;
} InsertRun;

static PyTypeObject InsertRunType;

static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/*
 * Walk the TupleData at data[pos:len]: 1 when it is well formed, ends exactly at len, has at
 * least one column and every column is text or NULL; 0 otherwise.
 */
static int plain_tuple(const unsigned char *data, Py_ssize_t len, Py_ssize_t pos) {
    if (pos + 2 > len) return 0;
    Py_ssize_t ncols = ((Py_ssize_t)data[pos] << 8) | data[pos + 1];
    pos += 2;
    if (ncols == 0) return 0;
    for (Py_ssize_t i = 0; i < ncols; i++) {
        if (pos >= len) return 0;
        unsigned char kind = data[pos];
        if (kind == 'n') {
            pos += 1;
        } else if (kind == 't') {
            if (pos + 5 > len) return 0;
            Py_ssize_t size = (Py_ssize_t)be32(data + pos + 1);
            pos += 5;
            if (size > len - pos) return 0;
            pos += size;
        } else {
            return 0;
        }
    }
    return pos == len;
}

static InsertRun *new_run(uint32_t oid) {
    InsertRun *run = PyObject_New(InsertRun, &InsertRunType);
    if (run == NULL) return NULL;
    run->oid = oid;
    run->sealed = 0;
    run->rows = 0;
    run->buf = NULL;
    run->len = run->cap = 0;
    return run;
}

static int run_append(InsertRun *run, const unsigned char *tuple, Py_ssize_t size) {
    if (size > PY_SSIZE_T_MAX / 4 - run->len) {
        PyErr_NoMemory();
        return -1;
    }
    if (run->len + size > run->cap) {
        Py_ssize_t cap = run->cap ? run->cap : 4096;
        while (cap < run->len + size) cap *= 2;
        char *grown = PyMem_Realloc(run->buf, (size_t)cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        run->buf = grown;
        run->cap = cap;
    }
    memcpy(run->buf + run->len, tuple, (size_t)size);
    run->len += size;
    run->rows++;
    return 0;
}

/* The open run of relation oid at the end of rows, or NULL. */
static InsertRun *open_run(PyObject *rows, uint32_t oid) {
    Py_ssize_t n = PyList_GET_SIZE(rows);
    if (n == 0) return NULL;
    PyObject *last = PyList_GET_ITEM(rows, n - 1);
    if (Py_TYPE(last) != &InsertRunType) return NULL;
    InsertRun *run = (InsertRun *)last;
    return run->oid == oid && !run->sealed ? run : NULL;
}

int speedups_take_row(PyObject *rows, const unsigned char *data, Py_ssize_t len) {
    if (len >= 6 && data[0] == 'I' && data[5] == 'N' && plain_tuple(data, len, 6)) {
        uint32_t oid = be32(data + 1);
        InsertRun *run = open_run(rows, oid);
        if (run == NULL) {
            run = new_run(oid);
            if (run == NULL) return -1;
            int failed = PyList_Append(rows, (PyObject *)run);
            Py_DECREF(run); /* the list holds it */
            if (failed) return -1;
        }
        return run_append(run, data + 6, len - 6) < 0 ? -1 : 1;
    }
    PyObject *change = speedups_row_change(data, len);
    if (change == NULL) return PyErr_Occurred() ? -1 : 0;
    int failed = PyList_Append(rows, change);
    Py_DECREF(change);
    return failed ? -1 : 1;
}

/* take_row(rows, message) -> bool */
PyObject *speedups_py_take_row(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (speedups_not_ready()) return NULL;
    if (nargs != 2 || !PyList_CheckExact(args[0]) || !PyBytes_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "take_row(rows: list, message: bytes)");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    int taken = speedups_take_row(args[0], data, PyBytes_GET_SIZE(args[1]));
    if (taken < 0) return NULL;
    return PyBool_FromLong(taken);
}

/* COPY text lines of every row (see put_escaped); no exception can happen in here. */
static Py_ssize_t run_copy_text(const InsertRun *run, char *out) {
    const unsigned char *p = (const unsigned char *)run->buf, *end = p + run->len;
    char *start = out;
    while (p < end) {
        Py_ssize_t ncols = ((Py_ssize_t)p[0] << 8) | p[1];
        p += 2;
        for (Py_ssize_t i = 0; i < ncols; i++) {
            if (i) *out++ = '\t';
            if (*p == 'n') {
                *out++ = '\\';
                *out++ = 'N';
                p += 1;
            } else {
                Py_ssize_t size = (Py_ssize_t)be32(p + 1);
                out = speedups_put_escaped(out, (const char *)p + 5, size);
                p += 5 + size;
            }
        }
        *out++ = '\n';
    }
    return out - start;
}

/* copy_text() -> bytes: the rows as COPY text lines. A tuple's text form is at most three times
 * its wire size (a 1-byte NULL becomes "\N" and a tab; an escaped byte becomes two). The
 * conversion runs without the GIL: a sealed run is never changed again. */
static PyObject *run_py_copy_text(PyObject *self, PyObject *unused) {
    InsertRun *run = (InsertRun *)self;
    run->sealed = 1;
    PyObject *result = PyBytes_FromStringAndSize(NULL, 3 * run->len);
    if (result == NULL) return NULL;
    char *out = PyBytes_AS_STRING(result);
    Py_ssize_t size;
    Py_BEGIN_ALLOW_THREADS;
    size = run_copy_text(run, out);
    Py_END_ALLOW_THREADS;
    if (_PyBytes_Resize(&result, size) < 0) return NULL;
    return result;
}

/* tuples() -> list[TupleData]: the rows as the decoder builds them. */
static PyObject *run_py_tuples(PyObject *self, PyObject *unused) {
    InsertRun *run = (InsertRun *)self;
    run->sealed = 1;
    PyObject *out = PyList_New(run->rows);
    if (out == NULL) return NULL;
    Py_ssize_t pos = 0;
    for (Py_ssize_t r = 0; r < run->rows; r++) {
        PyObject *td = speedups_read_tuple((const unsigned char *)run->buf, run->len, &pos);
        if (td == NULL) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "corrupt InsertRun");
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, r, td);
    }
    return out;
}

static PyObject *run_relation_oid(PyObject *self, void *closure) {
    return PyLong_FromUnsignedLong(((InsertRun *)self)->oid);
}

static PyObject *run_rows(PyObject *self, void *closure) {
    return PyLong_FromSsize_t(((InsertRun *)self)->rows);
}

static PyObject *run_nbytes(PyObject *self, void *closure) {
    return PyLong_FromSsize_t(((InsertRun *)self)->len);
}

static PyObject *run_repr(PyObject *self) {
    InsertRun *run = (InsertRun *)self;
    return PyUnicode_FromFormat("InsertRun(relation_oid=%lu, rows=%zd, nbytes=%zd)",
                                (unsigned long)run->oid, run->rows, run->len);
}

static void run_dealloc(PyObject *self) {
    PyMem_Free(((InsertRun *)self)->buf);
    Py_TYPE(self)->tp_free(self);
}

static PyGetSetDef run_getset[] = {
    {"relation_oid", run_relation_oid, NULL, "the relation the rows were inserted into", NULL},
    {"rows", run_rows, NULL, "how many inserted rows the run holds", NULL},
    {"nbytes", run_nbytes, NULL, "the size of the rows as pgoutput sent them", NULL},
    {NULL},
};

static PyMethodDef run_methods[] = {
    {"copy_text", run_py_copy_text, METH_NOARGS, "copy_text() -> bytes: COPY text lines."},
    {"tuples", run_py_tuples, METH_NOARGS, "tuples() -> list[TupleData]: the decoded rows."},
    {NULL},
};

static PyTypeObject InsertRunType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pgmigrator.protocol._speedups.InsertRun",
    .tp_basicsize = sizeof(InsertRun),
    .tp_dealloc = run_dealloc,
    .tp_repr = run_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Inserted rows of one relation, kept as pgoutput tuples (made by take_row).",
    .tp_methods = run_methods,
    .tp_getset = run_getset,
};

int speedups_add_run_type(PyObject *module) {
    if (PyType_Ready(&InsertRunType) < 0) return -1;
    Py_INCREF(&InsertRunType);
    if (PyModule_AddObject(module, "InsertRun", (PyObject *)&InsertRunType) < 0) {
        Py_DECREF(&InsertRunType);
        return -1;
    }
    return 0;
}
