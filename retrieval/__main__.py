"""`python -m retrieval` runs the same CLI as the `retrieval` command."""

from retrieval.cli import app

app(prog_name="retrieval")
