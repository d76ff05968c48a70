"""`pgmigrator stream` and `pgmigrator listen`: change events encoded once, filtered, fanned out to sinks."""
