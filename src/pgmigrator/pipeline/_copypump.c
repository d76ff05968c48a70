/* Optional C loop of the COPY workers: moves COPY data from a source to a destination libpq
 * connection without the GIL and without a Python object per row.
 *
 * The reference is the pure-Python loop in copyworker.py (``Worker._py_pump``); this does the
 * same calls on the same connections. libpq itself is not linked: the caller hands over the
 * addresses of PQgetCopyData, PQputCopyData and PQfreemem from the very libpq that psycopg
 * loaded (see _pump.py), so the PGconn pointers it passes are that library's own.
 *
 * pump(src, dst, progress, every_s) -> (nbytes, end, put_status, pending)
 *   src, dst     PGconn addresses (psycopg's ``pgconn.pgconn_ptr``), both blocking
 *   progress     called with the bytes moved since its last call, at most every ``every_s``
 *   end          PQgetCopyData's last result: -1 end of the COPY, -2 a source error
 *   put_status   1 while every PQputCopyData succeeded, else the first failing result; after a
 *                failure the rest of the source's data is still read (and dropped) so that the
 *                source session stays usable
 *   pending      bytes moved since the last progress call
 * If ``progress`` raises, the loop still drains the source, then the exception propagates.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <time.h>

typedef int (*get_copy_data_fn)(void *conn, char **buffer, int async);
typedef int (*put_copy_data_fn)(void *conn, const char *buffer, int nbytes);
typedef void (*freemem_fn)(void *ptr);

static get_copy_data_fn pq_get_copy_data = NULL;
static put_copy_data_fn pq_put_copy_data = NULL;
static freemem_fn pq_freemem = NULL;

static double
monotonic_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static PyObject *
bind(PyObject *self, PyObject *args)
{
    unsigned long long get, put, freemem;
    if (!PyArg_ParseTuple(args, "KKK", &get, &put, &freemem))
        return NULL;
    if (!get || !put || !freemem) {
        PyErr_SetString(PyExc_ValueError, "null libpq function address");
        return NULL;
    }
    pq_get_copy_data = (get_copy_data_fn)(uintptr_t)get;
    pq_put_copy_data = (put_copy_data_fn)(uintptr_t)put;
    pq_freemem = (freemem_fn)(uintptr_t)freemem;
    Py_RETURN_NONE;
}

/* Calls progress(pending) with the GIL held; on failure keeps the first exception. */
static void
report(PyObject *progress, long long pending, PyObject **exc_type, PyObject **exc_value,
       PyObject **exc_tb)
{
    if (*exc_type != NULL)
        return;
    PyObject *res = PyObject_CallFunction(progress, "L", pending);
    if (res == NULL)
        PyErr_Fetch(exc_type, exc_value, exc_tb);
    else
        Py_DECREF(res);
}

static PyObject *
pump(PyObject *self, PyObject *args)
{
    unsigned long long src_addr, dst_addr;
    PyObject *progress;
    double every_s;
    if (!PyArg_ParseTuple(args, "KKOd", &src_addr, &dst_addr, &progress, &every_s))
        return NULL;
    if (pq_get_copy_data == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_copypump.bind() was not called");
        return NULL;
    }
    void *src = (void *)(uintptr_t)src_addr, *dst = (void *)(uintptr_t)dst_addr;
    PyObject *exc_type = NULL, *exc_value = NULL, *exc_tb = NULL;
    long long nbytes = 0, pending = 0;
    int end, put_status = 1;
    unsigned int rows = 0;
    double last = monotonic_s();
    PyThreadState *state = PyEval_SaveThread();
    for (;;) {
        char *buf = NULL;
        end = pq_get_copy_data(src, &buf, 0);
        if (end < 0)
            break;
        nbytes += end;
        pending += end;
        if (put_status == 1) {
            int rv = pq_put_copy_data(dst, buf, end);
            if (rv != 1)
                put_status = rv;
        }
        pq_freemem(buf);
        if ((++rows & 255u) == 0) {
            double now = monotonic_s();
            if (now - last >= every_s) {
                PyEval_RestoreThread(state);
                report(progress, pending, &exc_type, &exc_value, &exc_tb);
                state = PyEval_SaveThread();
                pending = 0;
                last = now;
            }
        }
    }
    PyEval_RestoreThread(state);
    if (exc_type != NULL) {
        PyErr_Restore(exc_type, exc_value, exc_tb);
        return NULL;
    }
    return Py_BuildValue("LiiL", nbytes, end, put_status, pending);
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS, "bind(get, put, freemem): libpq function addresses"},
    {"pump", pump, METH_VARARGS, "pump(src, dst, progress, every_s) -> (nbytes, end, put, pending)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_copypump", "COPY data pump between two libpq connections", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__copypump(void)
{
    return PyModule_Create(&module);
}
