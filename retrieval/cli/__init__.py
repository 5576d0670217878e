"""The `retrieval` command: the table of commands below, one module per command group, each command parsing
its arguments, calling one library function and printing its result (a table, or --json). The library is
imported inside each command, not at the top: `retrieval query --server` and `--help` then start without
numpy, Pillow or FAISS.

app.py holds the typer app, the shared options and the one place library errors become exit codes; output.py
how results and progress are written. Adding a command is a function in a module here and a line below."""

from retrieval.cli.app import app
from retrieval.cli.bench import bench_app
from retrieval.cli.dupes import dupes
from retrieval.cli.evaluate import evaluate
from retrieval.cli.index import compact, export, info, verify
from retrieval.cli.ingest import ingest
from retrieval.cli.query import query
from retrieval.cli.serve import serve

# in the order `retrieval --help` lists them
app.command()(ingest)
app.command()(query)
app.command()(info)
app.command()(verify)
app.command()(compact)
app.command()(export)
app.command()(dupes)
app.command("eval")(evaluate)
app.command()(serve)
app.add_typer(bench_app, name="bench")

__all__ = ["app"]
