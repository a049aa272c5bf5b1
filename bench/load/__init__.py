"""The load tester of issue 7: ``python -m bench.load`` (see :mod:`bench.load.run`)."""
