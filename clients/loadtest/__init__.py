"""Load-test harness of segsrv (run.py is the command line; docs/loadtest.md)."""
