"""The overhead benchmark: fake upstream, load generator, the stack under test, the driver."""
