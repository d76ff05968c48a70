/*
 * Optional C accelerator for the pgoutput decoder's hot path (pgmigrator.protocol.pgoutput).
 *
 * The pure-Python decoder is the reference: this module only speeds up the two calls that run
 * once per replicated row, `read_tuple` and `decode_row_change`, and produces exactly the same
 * immutable values (TupleData, Insert, Update, Delete). It never reports a protocol error
 * itself: on anything it does not fully accept (truncated data, trailing bytes, an unknown kind,
 * a buffer that is not `bytes`) it calls the Python fallback it was set up with, which raises
 * the precise ProtocolError or decodes the message its own way.
 *
 * `setup()` receives the classes and their slot descriptors once; objects are then built by
 * allocating the instance and filling its slots through the descriptors, the way the Python
 * `unchecked` constructors do with `object.__setattr__`.
 */
#include "_speedups.h"
#include <stdint.h>
#include <string.h>

typedef struct {
    PyTypeObject *type;
    PyObject *slots[5]; /* member descriptors, in the order the builder fills them */
    int nslots;
} Builder;

static Builder tuple_data, insert, update, delete;
static PyObject *fallback_tuple;  /* fallback(buf, pos, tag) -> (TupleData, pos) */
static PyObject *fallback_change; /* fallback(buf) -> Insert | Update | Delete | None */
static PyObject *kind_k, *kind_o; /* the old-tuple kinds "K" and "O" */
static int ready;

static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/*
 * Build an instance of b->type with its slots set to values (steals nothing).
 *
 * The instance is taken off the cyclic garbage collector's lists, as CPython does for tuples of
 * atomic values: these frozen objects hold only bytes, ints, None and each other, so they can
 * never be part of a cycle, and a backlog keeps hundreds of thousands of them alive that the
 * collector would otherwise scan again and again (a third of the decoding time).
 */
static PyObject *build(Builder *b, PyObject *const *values) {
    PyObject *obj = b->type->tp_alloc(b->type, 0);
    if (obj == NULL) return NULL;
    for (int i = 0; i < b->nslots; i++) {
        PyObject *descr = b->slots[i];
        if (Py_TYPE(descr)->tp_descr_set(descr, obj, values[i]) < 0) {
            Py_DECREF(obj);
            return NULL;
        }
    }
    if (PyObject_IS_GC(obj)) PyObject_GC_UnTrack(obj);
    return obj;
}

/*
 * Read TupleData at *pos of data[0:len]. Returns a new TupleData and advances *pos, or returns
 * NULL with no exception set when the data is not well formed (the caller falls back), or NULL
 * with an exception set on a memory error.
 */
static PyObject *read_tuple_at(const unsigned char *data, Py_ssize_t len, Py_ssize_t *pos) {
    Py_ssize_t p = *pos;
    if (p < 0 || p + 2 > len) return NULL;
    Py_ssize_t ncols = ((Py_ssize_t)data[p] << 8) | data[p + 1];
    p += 2;
    PyObject *kinds = PyBytes_FromStringAndSize(NULL, ncols);
    PyObject *values = PyTuple_New(ncols);
    if (kinds == NULL || values == NULL) goto fail;
    char *k = PyBytes_AS_STRING(kinds);
    for (Py_ssize_t i = 0; i < ncols; i++) {
        if (p >= len) goto malformed;
        unsigned char kind = data[p];
        k[i] = (char)kind;
        if (kind == 't' || kind == 'b') {
            if (p + 5 > len) goto malformed;
            Py_ssize_t size = (Py_ssize_t)be32(data + p + 1);
            p += 5;
            if (size > len - p) goto malformed;
            PyObject *v = PyBytes_FromStringAndSize((const char *)data + p, size);
            if (v == NULL) goto fail;
            PyTuple_SET_ITEM(values, i, v);
            p += size;
        } else if (kind == 'n' || kind == 'u') {
            Py_INCREF(Py_None);
            PyTuple_SET_ITEM(values, i, Py_None);
            p += 1;
        } else {
            goto malformed;
        }
    }
    PyObject_GC_UnTrack(values); /* only bytes and None: no cycle possible (see build) */
    PyObject *parts[2] = {kinds, values};
    PyObject *result = build(&tuple_data, parts);
    Py_DECREF(kinds);
    Py_DECREF(values);
    if (result != NULL) *pos = p;
    return result;
malformed:
    Py_XDECREF(kinds);
    Py_XDECREF(values);
    return NULL;
fail:
    Py_XDECREF(kinds);
    Py_XDECREF(values);
    if (!PyErr_Occurred()) PyErr_NoMemory();
    return NULL;
}

PyObject *speedups_read_tuple(const unsigned char *data, Py_ssize_t len, Py_ssize_t *pos) {
    return read_tuple_at(data, len, pos);
}

int speedups_not_ready(void) {
    if (!ready) PyErr_SetString(PyExc_RuntimeError, "_speedups.setup() was not called");
    return !ready;
}

/* read_tuple(buf, pos, tag) -> (TupleData, new_pos) */
static PyObject *py_read_tuple(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "read_tuple(buf, pos, tag)");
        return NULL;
    }
    if (speedups_not_ready()) return NULL;
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) return NULL;
    if (PyBytes_CheckExact(args[0])) {
        const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
        PyObject *td = read_tuple_at(data, PyBytes_GET_SIZE(args[0]), &pos);
        if (td != NULL) {
            PyObject *newpos = PyLong_FromSsize_t(pos);
            if (newpos == NULL) {
                Py_DECREF(td);
                return NULL;
            }
            PyObject *result = PyTuple_Pack(2, td, newpos);
            Py_DECREF(td);
            Py_DECREF(newpos);
            return result;
        }
        if (PyErr_Occurred()) return NULL;
    }
    return PyObject_Vectorcall(fallback_tuple, args, 3, NULL);
}

/* The I/U/D body after the tag; NULL without an exception: not well formed. */
PyObject *speedups_row_change(const unsigned char *data, Py_ssize_t len) {
    if (len < 6) return NULL;
    unsigned char tag = data[0], action = data[5];
    PyObject *oid = PyLong_FromUnsignedLong(be32(data + 1));
    if (oid == NULL) return NULL;
    Py_ssize_t pos = 6;
    PyObject *old = NULL, *new = NULL, *result = NULL, *old_kind = Py_None;
    if (tag == 'I') {
        if (action != 'N') goto done;
        new = read_tuple_at(data, len, &pos);
        if (new == NULL || pos != len) goto done;
        PyObject *parts[3] = {oid, new, Py_None};
        result = build(&insert, parts);
    } else if (tag == 'D') {
        if (action != 'K' && action != 'O') goto done;
        old_kind = action == 'K' ? kind_k : kind_o;
        old = read_tuple_at(data, len, &pos);
        if (old == NULL || pos != len) goto done;
        PyObject *parts[4] = {oid, old, old_kind, Py_None};
        result = build(&delete, parts);
    } else { /* 'U' */
        if (action == 'K' || action == 'O') {
            old_kind = action == 'K' ? kind_k : kind_o;
            old = read_tuple_at(data, len, &pos);
            if (old == NULL || pos >= len) goto done;
            action = data[pos++];
        }
        if (action != 'N') goto done;
        new = read_tuple_at(data, len, &pos);
        if (new == NULL || pos != len) goto done;
        PyObject *parts[5] = {oid, old ? old : Py_None, old_kind, new, Py_None};
        result = build(&update, parts);
    }
done:
    Py_DECREF(oid);
    Py_XDECREF(old);
    Py_XDECREF(new);
    return result;
}

/* decode_row_change(buf) -> Insert | Update | Delete | None */
static PyObject *py_decode_row_change(PyObject *self, PyObject *buf) {
    if (speedups_not_ready()) return NULL;
    if (PyBytes_CheckExact(buf)) {
        Py_ssize_t len = PyBytes_GET_SIZE(buf);
        const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(buf);
        if (len == 0 || (data[0] != 'I' && data[0] != 'U' && data[0] != 'D')) Py_RETURN_NONE;
        PyObject *result = speedups_row_change(data, len);
        if (result != NULL || PyErr_Occurred()) return result;
    }
    return PyObject_CallOneArg(fallback_change, buf);
}

static int slot_pair(PyObject *row, PyObject **kinds, PyObject **values) {
    /* The TupleData's kinds (bytes) and values (tuple); 0 when row is not a plain TupleData. */
    if (Py_TYPE(row) != tuple_data.type) return 0;
    PyObject *k = Py_TYPE(tuple_data.slots[0])->tp_descr_get(tuple_data.slots[0], row, NULL);
    if (k == NULL) return -1;
    PyObject *v = Py_TYPE(tuple_data.slots[1])->tp_descr_get(tuple_data.slots[1], row, NULL);
    if (v == NULL) {
        Py_DECREF(k);
        return -1;
    }
    if (!PyBytes_CheckExact(k) || !PyTuple_CheckExact(v) ||
        PyBytes_GET_SIZE(k) != PyTuple_GET_SIZE(v)) {
        Py_DECREF(k);
        Py_DECREF(v);
        return 0;
    }
    *kinds = k;
    *values = v;
    return 1;
}

/* The worst-case text size of one row, or -1 (no exception) when it is not plain text values. */
static Py_ssize_t row_bound(PyObject *kinds, PyObject *values) {
    Py_ssize_t n = PyTuple_GET_SIZE(values), size = n + 1;
    const char *k = PyBytes_AS_STRING(kinds);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyTuple_GET_ITEM(values, i);
        if (k[i] == 't') {
            if (!PyBytes_CheckExact(v)) return -1;
            size += 2 * PyBytes_GET_SIZE(v);
        } else if ((k[i] == 'n' || k[i] == 'u') && v == Py_None) {
            size += 2;
        } else {
            return -1;
        }
    }
    return size;
}

static char *put_row(char *out, PyObject *kinds, PyObject *values) {
    Py_ssize_t n = PyTuple_GET_SIZE(values);
    const char *k = PyBytes_AS_STRING(kinds);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i) *out++ = '\t';
        if (k[i] == 't') {
            PyObject *v = PyTuple_GET_ITEM(values, i);
            out = speedups_put_escaped(out, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
        } else {
            *out++ = '\\';
            *out++ = 'N';
        }
    }
    *out++ = '\n';
    return out;
}

/* copy_text(rows) -> bytes | None: COPY text lines for TupleData rows, None when a row holds
 * anything but text values and NULL/unchanged markers (the Python builder then decides). */
static PyObject *py_copy_text(PyObject *self, PyObject *rows) {
    if (speedups_not_ready()) return NULL;
    PyObject *seq = PySequence_Fast(rows, "copy_text() needs a sequence of rows");
    if (seq == NULL) return NULL;
    Py_ssize_t nrows = PySequence_Fast_GET_SIZE(seq), size = 0;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *result = NULL;
    for (Py_ssize_t r = 0; r < nrows; r++) {
        PyObject *kinds, *values;
        int ok = slot_pair(items[r], &kinds, &values);
        if (ok <= 0) goto plain;
        Py_ssize_t bound = row_bound(kinds, values);
        Py_DECREF(kinds);
        Py_DECREF(values);
        if (bound < 0 || bound > PY_SSIZE_T_MAX / 2 - size) goto plain;
        size += bound;
    }
    result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL) goto done;
    char *start = PyBytes_AS_STRING(result), *out = start;
    for (Py_ssize_t r = 0; r < nrows; r++) {
        PyObject *kinds, *values;
        if (slot_pair(items[r], &kinds, &values) <= 0) { /* rows changed under us */
            Py_CLEAR(result);
            goto plain;
        }
        out = put_row(out, kinds, values);
        Py_DECREF(kinds);
        Py_DECREF(values);
    }
    if (_PyBytes_Resize(&result, out - start) < 0) result = NULL;
    goto done;
plain:
    if (!PyErr_Occurred()) {
        result = Py_None;
        Py_INCREF(result);
    }
done:
    Py_DECREF(seq);
    return result;
}

static int take_builder(Builder *b, PyObject *spec) {
    /* spec: (type, (descriptor, ...)) */
    PyObject *type, *slots;
    if (!PyArg_ParseTuple(spec, "O!O!", &PyType_Type, &type, &PyTuple_Type, &slots)) return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(slots);
    if (n < 1 || n > 5) {
        PyErr_SetString(PyExc_ValueError, "between 1 and 5 slots");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *d = PyTuple_GET_ITEM(slots, i);
        if (Py_TYPE(d)->tp_descr_set == NULL) {
            PyErr_SetString(PyExc_TypeError, "a slot is not a settable descriptor");
            return -1;
        }
        Py_INCREF(d);
        b->slots[i] = d;
    }
    Py_INCREF(type);
    b->type = (PyTypeObject *)type;
    b->nslots = (int)n;
    return 0;
}

/* setup(tuple_data, insert, update, delete, fallback_tuple, fallback_change); each class spec is
 * (cls, (slot descriptors in constructor order)). */
static PyObject *py_setup(PyObject *self, PyObject *args) {
    PyObject *specs[4], *ft, *fc;
    if (ready) Py_RETURN_NONE;
    if (!PyArg_ParseTuple(args, "O!O!O!O!OO", &PyTuple_Type, &specs[0], &PyTuple_Type, &specs[1],
                          &PyTuple_Type, &specs[2], &PyTuple_Type, &specs[3], &ft, &fc))
        return NULL;
    if (take_builder(&tuple_data, specs[0]) < 0 || take_builder(&insert, specs[1]) < 0 ||
        take_builder(&update, specs[2]) < 0 || take_builder(&delete, specs[3]) < 0)
        return NULL;
    if (tuple_data.nslots != 2 || insert.nslots != 3 || update.nslots != 5 || delete.nslots != 4) {
        PyErr_SetString(PyExc_ValueError, "unexpected slot counts");
        return NULL;
    }
    Py_INCREF(ft);
    Py_INCREF(fc);
    fallback_tuple = ft;
    fallback_change = fc;
    kind_k = PyUnicode_InternFromString("K");
    kind_o = PyUnicode_InternFromString("O");
    if (kind_k == NULL || kind_o == NULL) return NULL;
    ready = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"setup", py_setup, METH_VARARGS, "Give the classes to build and the Python fallbacks."},
    {"read_tuple", (PyCFunction)(void (*)(void))py_read_tuple, METH_FASTCALL,
     "read_tuple(buf, pos, tag) -> (TupleData, new_pos), as pgoutput._read_tuple."},
    {"decode_row_change", py_decode_row_change, METH_O,
     "decode_row_change(buf) -> Insert | Update | Delete | None, as pgoutput.decode_row_change."},
    {"copy_text", py_copy_text, METH_O,
     "copy_text(rows) -> bytes | None: COPY text lines for TupleData rows (None: not plain text)."},
    {"pump_rows", (PyCFunction)(void (*)(void))speedups_pump_rows, METH_FASTCALL,
     "pump_rows(conn, rows, room, txn) -> (appended, wal_end, rest): take buffered frames."},
    {"take_frames", (PyCFunction)(void (*)(void))speedups_take_frames, METH_FASTCALL,
     "take_frames(rows, frames, start, room, txn) -> (appended, wal_end, next): pump_rows' loop "
     "over a list of frames."},
    {"take_row", (PyCFunction)(void (*)(void))speedups_py_take_row, METH_FASTCALL,
     "take_row(rows, message) -> bool: a row change into rows, inserts kept in InsertRuns."},
    {"bind_libpq", speedups_bind_libpq, METH_VARARGS,
     "bind_libpq(PQgetCopyData, PQfreemem): the addresses of psycopg's libpq functions."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_speedups", "C accelerator for the pgoutput decoder's hot path.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (speedups_add_run_type(m) < 0 || speedups_add_txn_type(m) < 0)) Py_CLEAR(m);
    return m;
}
