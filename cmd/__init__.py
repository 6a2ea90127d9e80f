"""lsr's command-line layer (installed as ``litestream_py.cmd``): parse, call the engine, print."""
