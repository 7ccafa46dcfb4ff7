"""The overhead benchmark: fake upstream, load generator, the stack under test, the driver;
the stress gate; and `process_mesh`, how they and the tests start and stop service processes."""
