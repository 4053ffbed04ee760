"""Load tests of diffres-serve: the Locust file, a local server and the runner
(``python -m load_tests.run --help``)."""
