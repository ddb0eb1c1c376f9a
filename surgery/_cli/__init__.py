"""The ``surgery`` command line. Imported only by :mod:`surgery.__main__`.

It needs the ``cli`` extra (click and rich); the library itself does not.
"""
