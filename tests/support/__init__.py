"""Helpers shared by the tests, imported as ``support.<module>``; fixtures stay in conftest.py.

``tests/`` has no ``__init__.py``: pytest (prepend import mode) puts it on sys.path
when it loads tests/conftest.py, whether run as ``pytest`` or ``python -m pytest``,
so ``support`` resolves the same way from tests/, tests/cli/ and the others.
"""
