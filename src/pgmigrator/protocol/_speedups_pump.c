/*
 * The replication stream's backlog loop in C: XLogData frames go from libpq's buffer into the
 * reader's state with no Python call, memoryview or bytes copy per message.
 *
 * The reference is the Python loop (ReplicationStream.pump feeding Reader.feed); this only takes
 * the messages that loop handles the same way every time, and hands anything else back untouched:
 *   - an Insert, Update or Delete inside a transaction goes into the reader's pending list
 *     (take_row: updates and deletes decoded, inserts kept as runs of pgoutput tuples, see
 *     _speedups_runs.c);
 *   - a Begin outside a transaction and a Commit inside one update a TxnState, the part of the
 *     reader's batch that transaction boundaries change (Reader.fast_rows / rows_added copy it in
 *     and out). A Commit that brings the batch to its row limit or past its deadline ends the
 *     call with flush_due set: the reader commits the batch before anything else is read.
 * libpq is not linked: bind_libpq() receives the addresses of PQgetCopyData and PQfreemem from
 * the libpq psycopg loaded (see _libpq.py), so the PGconn pointer it is given is that library's.
 *
 * pump_rows(conn, rows, room, txn) -> (appended, wal_end, rest)
 *   conn     psycopg's ``pgconn.pgconn_ptr`` of a replication connection in COPY BOTH mode
 *   rows     the list the row changes go to (at most ``room`` of them; see take_row)
 *   txn      the TxnState
 *   appended how many row changes were taken; wal_end the largest XLogData wal_end among the
 *            frames taken (0: none)
 *   rest     None: libpq holds no further complete message, ``room`` was reached or a flush is
 *            due; bytes: the next message, which the Python loop must handle (a keepalive, a
 *            Relation, an Origin, a row change the C decoder does not accept, ...); an int:
 *            PQgetCopyData's -1 (the COPY ended) or -2 (an error)
 *
 * take_frames(rows, frames, start, room, txn) -> (appended, wal_end, next) is the same loop over
 * a list of frames instead of libpq (for tests): it stops at frames[next], not taken, or at the
 * end of the list (next == len(frames)).
 */
#include "_speedups.h"
#include <stdint.h>
#include <structmember.h>
#include <time.h>

typedef int (*get_copy_data_fn)(void *conn, char **buffer, int async);
typedef void (*freemem_fn)(void *ptr);

static get_copy_data_fn pq_get_copy_data = NULL;
static freemem_fn pq_freemem = NULL;

#define XLOG_HEADER 25 /* 'w', wal_start, wal_end, send_time */
#define BEGIN_SIZE 21  /* 'B', final lsn, commit time, xid */
#define COMMIT_SIZE 26 /* 'C', flags, commit lsn, end lsn, commit time */

typedef struct {
    PyObject_HEAD
    int open;                      /* inside a source transaction */
    Py_ssize_t begins;             /* Begins taken since the reader last collected them */
    unsigned long long final_lsn;  /* the open transaction's, from its Begin */
    long long begin_time;          /* its commit time, from its Begin */
    Py_ssize_t commits;            /* Commits taken since the reader last collected them */
    unsigned long long end_lsn;    /* end LSN of the last Commit taken */
    long long commit_time;         /* commit time of the last Commit taken */
    Py_ssize_t rows;               /* row changes in the destination batch */
    Py_ssize_t max_rows;           /* the batch's row limit */
    long long deadline_ns;         /* CLOCK_MONOTONIC deadline of the batch; 0: empty batch */
    long long max_ns;              /* the batch's time limit */
    int flush_due;                 /* a Commit reached a limit: commit the batch now */
} TxnState;

static PyMemberDef txn_members[] = {
    {"open", T_INT, offsetof(TxnState, open), 0, NULL},
    {"begins", T_PYSSIZET, offsetof(TxnState, begins), 0, NULL},
    {"final_lsn", T_ULONGLONG, offsetof(TxnState, final_lsn), 0, NULL},
    {"begin_time", T_LONGLONG, offsetof(TxnState, begin_time), 0, NULL},
    {"commits", T_PYSSIZET, offsetof(TxnState, commits), 0, NULL},
    {"end_lsn", T_ULONGLONG, offsetof(TxnState, end_lsn), 0, NULL},
    {"commit_time", T_LONGLONG, offsetof(TxnState, commit_time), 0, NULL},
    {"rows", T_PYSSIZET, offsetof(TxnState, rows), 0, NULL},
    {"max_rows", T_PYSSIZET, offsetof(TxnState, max_rows), 0, NULL},
    {"deadline_ns", T_LONGLONG, offsetof(TxnState, deadline_ns), 0, NULL},
    {"max_ns", T_LONGLONG, offsetof(TxnState, max_ns), 0, NULL},
    {"flush_due", T_INT, offsetof(TxnState, flush_due), 0, NULL},
    {NULL},
};

static PyTypeObject TxnStateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pgmigrator.protocol._speedups.TxnState",
    .tp_basicsize = sizeof(TxnState),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The transaction-boundary part of the reader's batch, shared with the C loop.",
    .tp_members = txn_members,
    .tp_new = PyType_GenericNew,
};

int speedups_add_txn_type(PyObject *module) {
    if (PyType_Ready(&TxnStateType) < 0) return -1;
    Py_INCREF(&TxnStateType);
    if (PyModule_AddObject(module, "TxnState", (PyObject *)&TxnStateType) < 0) {
        Py_DECREF(&TxnStateType);
        return -1;
    }
    return 0;
}

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

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

enum { NOT_TAKEN = 0, TOOK_ROW = 1, TOOK_BOUNDARY = 2 };

/* One XLogData frame data[0:n]: TOOK_ROW, TOOK_BOUNDARY (a Begin or a Commit), NOT_TAKEN (no
 * exception: Python's turn) or -1 (an exception is set). */
static int take_frame(PyObject *rows, TxnState *txn, const unsigned char *data, Py_ssize_t n) {
    if (n <= XLOG_HEADER || data[0] != 'w') return NOT_TAKEN;
    const unsigned char *msg = data + XLOG_HEADER;
    Py_ssize_t len = n - XLOG_HEADER;
    switch (msg[0]) {
    case 'I':
    case 'U':
    case 'D': {
        if (!txn->open) return NOT_TAKEN;
        int taken = speedups_take_row(rows, msg, len);
        if (taken > 0) txn->rows++;
        return taken > 0 ? TOOK_ROW : taken;
    }
    case 'B':
        if (txn->open || len != BEGIN_SIZE) return NOT_TAKEN;
        txn->open = 1;
        txn->begins++;
        txn->final_lsn = be64(msg + 1);
        txn->begin_time = (long long)be64(msg + 9);
        if (txn->deadline_ns == 0) txn->deadline_ns = now_ns() + txn->max_ns;
        return TOOK_BOUNDARY;
    case 'C':
        if (!txn->open || len != COMMIT_SIZE) return NOT_TAKEN;
        txn->open = 0;
        txn->commits++;
        txn->end_lsn = be64(msg + 10);
        txn->commit_time = (long long)be64(msg + 18);
        if (txn->rows >= txn->max_rows || now_ns() >= txn->deadline_ns) txn->flush_due = 1;
        return TOOK_BOUNDARY;
    default:
        return NOT_TAKEN;
    }
}

static PyObject *pump_result(Py_ssize_t appended, uint64_t wal_end, PyObject *rest) {
    if (rest == NULL) return NULL;
    return Py_BuildValue("nKN", appended, (unsigned long long)wal_end, rest);
}

/* Check (rows: list, ..., room, txn: TxnState) at args[rows_at], args[room_at], args[room_at+1]. */
static int parse_common(PyObject *const *args, int rows_at, int room_at, Py_ssize_t *room,
                        TxnState **txn) {
    if (!PyList_CheckExact(args[rows_at]) || Py_TYPE(args[room_at + 1]) != &TxnStateType) {
        PyErr_SetString(PyExc_TypeError, "rows must be a list and txn a TxnState");
        return -1;
    }
    *room = PyLong_AsSsize_t(args[room_at]);
    if (*room == -1 && PyErr_Occurred()) return -1;
    *txn = (TxnState *)args[room_at + 1];
    (*txn)->flush_due = 0;
    return 0;
}

PyObject *speedups_pump_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (speedups_not_ready()) return NULL;
    if (pq_get_copy_data == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_speedups.bind_libpq() was not called");
        return NULL;
    }
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "pump_rows(conn, rows, room, txn)");
        return NULL;
    }
    Py_ssize_t room;
    TxnState *txn;
    if (parse_common(args, 1, 2, &room, &txn) < 0) return NULL;
    void *conn = PyLong_AsVoidPtr(args[0]);
    if (conn == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "pump_rows: null connection");
        return NULL;
    }
    PyObject *rows = args[1];
    Py_ssize_t appended = 0;
    uint64_t wal_end = 0;
    while (appended < room && !txn->flush_due) {
        char *buf = NULL;
        int n = pq_get_copy_data(conn, &buf, 1);
        if (n == 0) break;
        if (n < 0) return pump_result(appended, wal_end, PyLong_FromLong(n));
        const unsigned char *data = (const unsigned char *)buf;
        int taken = take_frame(rows, txn, data, n);
        if (taken <= 0) { /* not ours, or not accepted by the C decoder: Python's turn */
            PyObject *rest = taken < 0 ? NULL : PyBytes_FromStringAndSize(buf, n);
            pq_freemem(buf);
            return pump_result(appended, wal_end, rest);
        }
        uint64_t end = be64(data + 9);
        pq_freemem(buf);
        if (end > wal_end) wal_end = end;
        if (taken == TOOK_ROW) appended++;
    }
    Py_INCREF(Py_None);
    return pump_result(appended, wal_end, Py_None);
}

PyObject *speedups_take_frames(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (speedups_not_ready()) return NULL;
    if (nargs != 5 || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "take_frames(rows, frames: list, start, room, txn)");
        return NULL;
    }
    Py_ssize_t room, next = PyLong_AsSsize_t(args[2]);
    TxnState *txn;
    if ((next == -1 && PyErr_Occurred()) || parse_common(args, 0, 3, &room, &txn) < 0) return NULL;
    PyObject *frames = args[1];
    Py_ssize_t appended = 0;
    uint64_t wal_end = 0;
    for (; next < PyList_GET_SIZE(frames) && appended < room && !txn->flush_due; next++) {
        PyObject *frame = PyList_GET_ITEM(frames, next);
        if (!PyBytes_CheckExact(frame)) break;
        const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(frame);
        int taken = take_frame(args[0], txn, data, PyBytes_GET_SIZE(frame));
        if (taken < 0) return NULL;
        if (taken == NOT_TAKEN) break;
        uint64_t end = be64(data + 9);
        if (end > wal_end) wal_end = end;
        if (taken == TOOK_ROW) appended++;
    }
    return Py_BuildValue("nKn", appended, (unsigned long long)wal_end, next);
}
