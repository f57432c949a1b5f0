"""`segsrv report`: one self-contained HTML file describing a snapshot's segments, models and drift
(docs/report.md). gather.py asks a backend (the in-process service or the client) for the numbers;
plots.py draws them (matplotlib); render.py writes the page (jinja2)."""
