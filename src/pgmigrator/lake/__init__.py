"""The Apache Iceberg destination (`pgmigrator lake`): types, Arrow batches, writer, pipeline."""
