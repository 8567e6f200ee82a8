"""The shipped configs (`--config configs/<name>.py`); the repository's top-level configs/ is a link to this folder.

Configs import each other as `debias_jax.configs...`, so they load from any working directory and from an
installed package; debias_jax/config_files.py finds them when a `configs/...` path does not exist locally.
"""
