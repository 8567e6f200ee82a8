"""The command line's modes as drivers: each reads its config section, calls the libraries and writes files.

`sample` (ADM-layout .npz and a PNG grid), `evaluate` (FID-style metrics of every checkpoint, resumably) and
`analyze` (the bias study of analysis/study.py); training's driver is train.py.
"""
