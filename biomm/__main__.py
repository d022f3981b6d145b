"""`python -m biomm` runs the CLI."""
from biomm.cli import main

main()
