/*
 * The replication stream's backlog loop in C: row changes go from libpq's buffer into the reader's
 * list (take_row: updates and deletes decoded, inserts kept as runs of pgoutput tuples, see
 * _speedups_runs.c), with no Python call, memoryview or bytes copy per message.
 *
 * The reference is the Python loop (ReplicationStream.pump feeding Reader.feed); this only takes
 * the messages that loop handles the same way every time, XLogData carrying an Insert, Update or
 * Delete, and hands anything else back untouched. libpq is not linked: bind_libpq() receives the
 * addresses of PQgetCopyData and PQfreemem from the libpq psycopg loaded (see _libpq.py),
 * so the PGconn pointer it is given is that library's own.
 *
 * pump_rows(conn, rows, room) -> (appended, wal_end, rest)
 *   conn     psycopg's ``pgconn.pgconn_ptr`` of a replication connection in COPY BOTH mode
 *   rows     the list the row changes go to (at most ``room`` of them; see take_row)
 *   appended how many were taken; wal_end the largest XLogData wal_end among them (0: none)
 *   rest     None: libpq holds no further complete message (or ``room`` was reached);
 *            bytes: the next message, which the Python loop must handle (a keepalive, a Begin,
 *            a Commit, a Relation, a row change the C decoder does not accept, ...);
 *            an int: PQgetCopyData's -1 (the COPY ended) or -2 (an error)
 */
#include "_speedups.h"
#include <stdint.h>

typedef int (*get_copy_data_fn)(void *conn, char **buffer, int async);
typedef void (*freemem_fn)(void *ptr);

static get_copy_data_fn pq_get_copy_data = NULL;
static freemem_fn pq_freemem = NULL;

#define XLOG_HEADER 25 /* 'w', wal_start, wal_end, send_time */

PyObject *speedups_bind_libpq(PyObject *self, PyObject *args) {
    unsigned long long get, freemem;
    if (!PyArg_ParseTuple(args, "KK", &get, &freemem)) return NULL;
    if (!get || !freemem) {
        PyErr_SetString(PyExc_ValueError, "null libpq function address");
        return NULL;
    }
    pq_get_copy_data = (get_copy_data_fn)(uintptr_t)get;
    pq_freemem = (freemem_fn)(uintptr_t)freemem;
    Py_RETURN_NONE;
}

static uint64_t be64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

static PyObject *pump_result(Py_ssize_t appended, uint64_t wal_end, PyObject *rest) {
    if (rest == NULL) return NULL;
    return Py_BuildValue("nKN", appended, (unsigned long long)wal_end, rest);
}

PyObject *speedups_pump_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (speedups_not_ready()) return NULL;
    if (pq_get_copy_data == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_speedups.bind_libpq() was not called");
        return NULL;
    }
    if (nargs != 3 || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "pump_rows(conn, rows: list, room)");
        return NULL;
    }
    void *conn = PyLong_AsVoidPtr(args[0]);
    Py_ssize_t room = PyLong_AsSsize_t(args[2]);
    if ((conn == NULL || room < 0) && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "pump_rows: null connection or negative room");
    if (PyErr_Occurred()) return NULL;
    PyObject *rows = args[1];
    Py_ssize_t appended = 0;
    uint64_t wal_end = 0;
    while (appended < room) {
        char *buf = NULL;
        int n = pq_get_copy_data(conn, &buf, 1);
        if (n == 0) break;
        if (n < 0) return pump_result(appended, wal_end, PyLong_FromLong(n));
        const unsigned char *data = (const unsigned char *)buf;
        int taken = 0;
        if (n > XLOG_HEADER && data[0] == 'w') {
            unsigned char tag = data[XLOG_HEADER];
            if (tag == 'I' || tag == 'U' || tag == 'D')
                taken = speedups_take_row(rows, data + XLOG_HEADER, n - XLOG_HEADER);
        }
        if (taken <= 0) { /* not ours, or not accepted by the C decoder: Python's turn */
            PyObject *rest = taken < 0 ? NULL : PyBytes_FromStringAndSize(buf, n);
            pq_freemem(buf);
            return pump_result(appended, wal_end, rest);
        }
        uint64_t end = be64(data + 9);
        pq_freemem(buf);
        if (end > wal_end) wal_end = end;
        appended++;
    }
    Py_INCREF(Py_None);
    return pump_result(appended, wal_end, Py_None);
}
