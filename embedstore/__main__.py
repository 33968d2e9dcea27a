from embedstore.cli import app

app(prog_name="embedstore")
