"""`python -m station`."""

from station.cli import main

main()
