/* Shared between the source files of the _speedups extension (one module, several files). */
#ifndef PGMIGRATOR_SPEEDUPS_H
#define PGMIGRATOR_SPEEDUPS_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* 1 (with RuntimeError set) until setup() was called. */
int speedups_not_ready(void);

/* Decode a pgoutput Insert/Update/Delete at data[0:len] into a new change object; NULL with no
 * exception when the message is not well formed (the Python decoder then says why). */
PyObject *speedups_row_change(const unsigned char *data, Py_ssize_t len);

/* Read the TupleData at *pos of data[0:len] into a new TupleData and advance *pos; NULL with no
 * exception when it is not well formed, NULL with an exception on a memory error. */
PyObject *speedups_read_tuple(const unsigned char *data, Py_ssize_t len, Py_ssize_t *pos);

/* pump_rows, take_frames, bind_libpq and the TxnState type, in _speedups_pump.c */
PyObject *speedups_pump_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *speedups_take_frames(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *speedups_bind_libpq(PyObject *self, PyObject *args);
int speedups_add_txn_type(PyObject *module);

/* InsertRun and take_row, in _speedups_runs.c: 1 taken, 0 not taken (no exception), -1 error. */
int speedups_take_row(PyObject *rows, const unsigned char *data, Py_ssize_t len);
PyObject *speedups_py_take_row(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
int speedups_add_run_type(PyObject *module);

/* COPY text's escape letter for each byte that needs one, 0 for the bytes copied as they are. */
static const unsigned char speedups_escape_of[256] = {
    ['\\'] = '\\', ['\t'] = 't', ['\n'] = 'n', ['\r'] = 'r'};

/* Append value v[0:n] at out, escaping COPY text specials; returns the new end. Runs of plain
 * bytes are copied with memcpy, so the per-byte work is one table lookup. */
static inline char *speedups_put_escaped(char *out, const char *v, Py_ssize_t n) {
    const unsigned char *p = (const unsigned char *)v, *end = p + n, *run = p;
    for (; p < end; p++) {
        unsigned char e = speedups_escape_of[*p];
        if (e) {
            memcpy(out, run, (size_t)(p - run));
            out += p - run;
            *out++ = '\\';
            *out++ = (char)e;
            run = p + 1;
        }
    }
    memcpy(out, run, (size_t)(end - run));
    return out + (end - run);
}

#endif
