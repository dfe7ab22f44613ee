# The command-line entry point; everything else lives in llama2.mojo.
from std.sys import exit
from llama2 import cli_main


def main():
    exit(cli_main())
