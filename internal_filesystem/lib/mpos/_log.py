# One line per failure, with its reason: through `logging` where the port has it, on stderr where it does not (the
# unix port from PyPI). URLs in it can be redacted.
import sys


def warning(source, msg):
    # A line that finds no heap (logging not loaded yet, the heap full) goes to stderr, or nowhere: the failure it
    # tells of still ends as documented rather than as a MemoryError
    try:
        try:
            import logging
        except ImportError:
            logging = None
        if logging is None:
            sys.stderr.write("%s: %s\n" % (source, msg))
        else:
            logging.getLogger(source).warning(msg)
    except MemoryError:
        try:
            sys.stderr.write(source)  # piece by piece: no str, tuple or bound method to make
            sys.stderr.write(": ")
            sys.stderr.write(msg)
            sys.stderr.write("\n")
        except MemoryError:
            pass


def redact(text):
    # Every URL in text as scheme://host/…: paths, queries and a user's password may carry keys (wallet apps),
    # also those of a redirect's target that an error quotes
    out = []
    start = text.find("://")
    while start >= 0:
        scheme = start
        while scheme and text[scheme - 1].isalpha():
            scheme -= 1
        # a URL in quotes (an error's repr of it) ends at its quote, any other at a blank: ' is a byte URLs may hold
        ends = " \t" + (text[scheme - 1] if scheme and text[scheme - 1] in "'\"" else "")
        host_start = host_end = start + 3
        while host_end < len(text) and text[host_end] not in "/?# \t'\"":
            if text[host_end] == "@":
                host_start = host_end + 1
            host_end += 1
        url_end = host_end
        while url_end < len(text) and text[url_end] not in ends:
            url_end += 1
        out.append(text[: start + 3] + text[host_start:host_end] + ("/…" if url_end > host_end else ""))
        text = text[url_end:]
        start = text.find("://")
    out.append(text)
    return "".join(out)
