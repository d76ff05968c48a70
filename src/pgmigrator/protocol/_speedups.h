/* Shared between the source files of the _speedups extension (one module, several files). */
#ifndef PGMIGRATOR_SPEEDUPS_H
#define PGMIGRATOR_SPEEDUPS_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* 1 (with RuntimeError set) until setup() was called. */
int speedups_not_ready(void);

/* Decode a pgoutput Insert/Update/Delete at data[0:len] into a new change object; NULL with no
 * exception when the message is not well formed (the Python decoder then says why). */
PyObject *speedups_row_change(const unsigned char *data, Py_ssize_t len);

/* pump_rows and bind_libpq, in _speedups_pump.c */
PyObject *speedups_pump_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *speedups_bind_libpq(PyObject *self, PyObject *args);

#endif
