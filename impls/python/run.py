"""The Python port: the reference core behind the port contract's command line.

numpy's BLAS decides its thread count when it is first imported, so -j is applied to the
environment before anything imports numpy.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _apply_threads(argv):
    for flag, value in zip(argv[1::2], argv[2::2]):
        if flag == "-j" and value.isdigit() and int(value) >= 1:
            for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[var] = value


if __name__ == "__main__":
    _apply_threads(sys.argv[1:])
    sys.path.insert(0, os.path.join(HERE, "..", ".."))
    from orchestrator.reference.cli import main, manifest_formats

    sys.exit(main(port="python", formats=manifest_formats(HERE)))
