from imagine.cli.main import app

app(prog_name="imagine")
