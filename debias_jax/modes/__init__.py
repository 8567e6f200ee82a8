"""The command line's modes as drivers: each reads its config section, calls the libraries and writes files.

`sample` (ADM-layout .npz and a PNG grid) and `evaluate` (FID-style metrics of every checkpoint, resumably);
training is train.py and the bias study analysis/study.py.
"""
