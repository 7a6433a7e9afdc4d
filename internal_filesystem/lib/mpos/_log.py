# One line per failure, with its reason: through `logging` where the port has it, on stderr where it does not (the
# unix port from PyPI).
import sys


def warning(source, msg):
    try:
        import logging
    except ImportError:
        sys.stderr.write("%s: %s\n" % (source, msg))
    else:
        logging.getLogger(source).warning(msg)
