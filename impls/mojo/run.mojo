# The program's entry point: the command line is cli.mojo's.
from std.sys import exit
from cli import cli_main


def main():
    exit(cli_main())
